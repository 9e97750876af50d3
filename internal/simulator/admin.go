package simulator

import (
	"encoding/json"
	"io"
	"net/http"
)

// AdminPrefix is where the admin endpoints live. They need no credentials:
// never expose the simulator beyond a test network.
const AdminPrefix = "/sim/"

// adminRoutes adds:
//
//	GET  /sim/calls          recorded calls ([]Call)
//	GET  /sim/deliveries     recorded callback attempts ([]Delivery)
//	GET  /sim/stats          counters (Stats)
//	GET  /sim/faults         current faults
//	PUT  /sim/faults         change faults; a partial JSON object changes only what it names
//	POST /sim/expire-tokens  invalidate API tokens
//	POST /sim/expire-sessions end M2M sessions
//	POST /sim/unlock         clear a login lockout
//	POST /sim/reset          forget recorded calls and deliveries
func (s *Server) adminRoutes(m *http.ServeMux) {
	m.HandleFunc("GET /sim/calls", func(w http.ResponseWriter, _ *http.Request) { writeJSON(w, http.StatusOK, s.Calls()) })
	m.HandleFunc("GET /sim/deliveries", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, s.Deliveries())
	})
	m.HandleFunc("GET /sim/stats", func(w http.ResponseWriter, _ *http.Request) { writeJSON(w, http.StatusOK, s.Stats()) })
	m.HandleFunc("GET /sim/faults", func(w http.ResponseWriter, _ *http.Request) { writeJSON(w, http.StatusOK, s.Faults()) })
	setFaults := func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		f := s.Faults()
		if err == nil {
			err = json.Unmarshal(body, &f)
		}
		if err == nil {
			err = s.SetFaults(f)
		}
		if err != nil {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": err.Error()})
			return
		}
		s.log.Info().RawJSON("faults", mustJSON(s.Faults())).Msg("faults changed")
		writeJSON(w, http.StatusOK, s.Faults())
	}
	m.HandleFunc("PUT /sim/faults", setFaults)
	m.HandleFunc("POST /sim/faults", setFaults)
	m.HandleFunc("PATCH /sim/faults", setFaults)
	done := func(w http.ResponseWriter) { writeJSON(w, http.StatusOK, map[string]string{"status": "ok"}) }
	m.HandleFunc("POST /sim/expire-tokens", func(w http.ResponseWriter, _ *http.Request) { s.ExpireTokens(); done(w) })
	m.HandleFunc("POST /sim/expire-sessions", func(w http.ResponseWriter, _ *http.Request) { s.ExpireSessions(); done(w) })
	m.HandleFunc("POST /sim/unlock", func(w http.ResponseWriter, _ *http.Request) { s.Unlock(); done(w) })
	m.HandleFunc("POST /sim/reset", func(w http.ResponseWriter, _ *http.Request) { s.ResetRecords(); done(w) })
}

func mustJSON(v any) []byte {
	b, _ := json.Marshal(v)
	return b
}
