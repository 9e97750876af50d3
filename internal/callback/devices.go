package callback

import (
	"context"
	"encoding/json"
	"net/http"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/esim-pipeline/thingspace-esim/internal/broker"
	"github.com/esim-pipeline/thingspace-esim/internal/observability"
)

// DeviceState answers GET /devices/{id}: the latest status event of the
// device and the latest per action, as stored.
type DeviceState struct {
	Latest  json.RawMessage            `json:"latest"`
	Actions map[string]json.RawMessage `json:"actions"`
}

// devices reads device state from the status stream and the EID index
// (broker.LookupDevice): an ICCID finds the events filed under it, an EID
// every event that named it, whichever ICCID its subject carries.
type devices struct {
	js      func() jetstream.JetStream // nil until NATS is ready
	timeout time.Duration
}

func (d *devices) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if id == "" || len(id) > 64 {
		observability.WriteJSON(w, http.StatusBadRequest, map[string]string{"error": "want an ICCID or an EID"})
		return
	}
	js := d.js()
	if js == nil {
		observability.WriteJSON(w, http.StatusServiceUnavailable, map[string]string{"error": "not connected to the status stream yet"})
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), d.timeout)
	defer cancel()
	found, err := broker.LookupDevice(ctx, js, id)
	switch {
	case err != nil:
		observability.WriteJSON(w, http.StatusServiceUnavailable, map[string]string{"error": "cannot read the status stream: " + err.Error()})
	case found == nil:
		observability.WriteJSON(w, http.StatusNotFound, map[string]string{"error": "no status event for device " + id})
	default:
		state := DeviceState{Latest: found.Latest.Data, Actions: make(map[string]json.RawMessage, len(found.Actions))}
		for action, ev := range found.Actions {
			state.Actions[action] = ev.Data
		}
		observability.WriteJSON(w, http.StatusOK, state)
	}
}
