package callback

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/esim-pipeline/thingspace-esim/internal/observability"
	"github.com/esim-pipeline/thingspace-esim/internal/status"
	"github.com/esim-pipeline/thingspace-esim/internal/thingspace"
)

// DeviceState answers GET /devices/{id}: the latest status event of the
// device and the latest per action, as stored.
type DeviceState struct {
	Latest  json.RawMessage            `json:"latest"`
	Actions map[string]json.RawMessage `json:"actions"`
}

// deviceActions are the subjects' action tokens looked up for a device.
var deviceActions = append(append([]string{}, thingspace.Actions...), status.UnknownAction)

// devices reads device state from the status stream: one direct get of the
// last message per action subject, in parallel.
type devices struct {
	stream  func() jetstream.Stream // nil until NATS is ready
	timeout time.Duration
}

func (d *devices) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if id == "" || len(id) > 64 {
		observability.WriteJSON(w, http.StatusBadRequest, map[string]string{"error": "want an ICCID or an EID"})
		return
	}
	st := d.stream()
	if st == nil {
		observability.WriteJSON(w, http.StatusServiceUnavailable, map[string]string{"error": "not connected to the status stream yet"})
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), d.timeout)
	defer cancel()
	state, err := lookup(ctx, st, id)
	switch {
	case err != nil:
		observability.WriteJSON(w, http.StatusServiceUnavailable, map[string]string{"error": "cannot read the status stream: " + err.Error()})
	case state == nil:
		observability.WriteJSON(w, http.StatusNotFound, map[string]string{"error": "no status event for device " + id + " (events are filed under the ICCID where one is known)"})
	default:
		observability.WriteJSON(w, http.StatusOK, state)
	}
}

// lookup returns nil, nil when the device has no event.
func lookup(ctx context.Context, st jetstream.Stream, id string) (*DeviceState, error) {
	type found struct {
		action string
		msg    *jetstream.RawStreamMsg
		err    error
	}
	results := make([]found, len(deviceActions))
	var wg sync.WaitGroup
	for i, action := range deviceActions {
		wg.Add(1)
		go func() {
			defer wg.Done()
			m, err := st.GetLastMsgForSubject(ctx, status.SubjectPrefix+"."+action+"."+status.Token(id))
			if errors.Is(err, jetstream.ErrMsgNotFound) {
				err = nil
			}
			results[i] = found{action: action, msg: m, err: err}
		}()
	}
	wg.Wait()
	state := &DeviceState{Actions: make(map[string]json.RawMessage)}
	var latest uint64
	for _, f := range results {
		if f.err != nil {
			return nil, f.err
		}
		if f.msg == nil {
			continue
		}
		state.Actions[f.action] = json.RawMessage(f.msg.Data)
		if f.msg.Sequence > latest {
			latest = f.msg.Sequence
			state.Latest = json.RawMessage(f.msg.Data)
		}
	}
	if len(state.Actions) == 0 {
		return nil, nil
	}
	return state, nil
}
