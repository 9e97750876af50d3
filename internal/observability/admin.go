package observability

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	stdlog "log"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/rs/zerolog"
	"golang.org/x/net/netutil"
)

// NewRegistry returns a Prometheus registry with the Go and process collectors.
func NewRegistry() *prometheus.Registry {
	r := prometheus.NewRegistry()
	r.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return r
}

// ReadyFunc answers nil when the service can do its work.
type ReadyFunc func() error

// Health adds GET /healthz (alive) and GET /readyz (ready answers nil) to mux.
func Health(mux *http.ServeMux, ready ReadyFunc) {
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		WriteJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if err := ready(); err != nil {
			WriteJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "not ready", "error": err.Error()})
			return
		}
		WriteJSON(w, http.StatusOK, map[string]string{"status": "ready"})
	})
}

// AdminMux is the admin listener's routes: health, readiness and /metrics.
// Callers may add more (callback-ingest adds /devices/{id}).
func AdminMux(reg *prometheus.Registry, ready ReadyFunc) *http.ServeMux {
	mux := http.NewServeMux()
	Health(mux, ready)
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	return mux
}

// WriteJSON answers v as JSON with the given status.
func WriteJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

// Server is an HTTP listener with the timeouts every listener of the
// pipeline needs, started and stopped with a context.
type Server struct {
	srv *http.Server
	ln  net.Listener
	log zerolog.Logger
}

// Listen binds addr (":0" picks a port) and returns a server for h.
func Listen(addr string, h http.Handler, log zerolog.Logger) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	return &Server{
		ln:  ln,
		log: log,
		srv: &http.Server{
			Handler:           h,
			ReadHeaderTimeout: 5 * time.Second,
			ReadTimeout:       30 * time.Second,
			WriteTimeout:      30 * time.Second,
			IdleTimeout:       120 * time.Second,
			MaxHeaderBytes:    64 << 10,
			ErrorLog:          stdlog.New(serverErrors{log}, "", 0),
		},
	}, nil
}

// serverErrors turns net/http's own error lines into log lines of log:
// failed TLS handshakes (scanners, plain HTTP on an HTTPS port) at Debug,
// anything else at Warn.
type serverErrors struct{ log zerolog.Logger }

func (e serverErrors) Write(p []byte) (int, error) {
	msg := strings.TrimSpace(string(p))
	ev := e.log.Warn()
	if strings.Contains(msg, "TLS handshake error") {
		ev = e.log.Debug()
	}
	ev.Str(FieldReason, msg).Msg("http server")
	return len(p), nil
}

// HTTP gives access to the underlying server, to tune timeouts before Serve.
// With HTTP().TLSConfig set, Serve speaks TLS only (its certificates come
// from the config: Certificates or GetCertificate).
func (s *Server) HTTP() *http.Server { return s.srv }

// LimitConnections caps the connections served at once at n (before Serve):
// the listener accepts no more until one closes, and the kernel's backlog
// holds the rest. The timeouts above bound how long any one may hold a slot.
func (s *Server) LimitConnections(n int) {
	if n > 0 {
		s.ln = netutil.LimitListener(s.ln, n)
	}
}

// Addr is the bound address.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Serve runs until ctx ends, then shuts down gracefully within grace.
func (s *Server) Serve(ctx context.Context, grace time.Duration) error {
	errc := make(chan error, 1)
	go func() {
		if s.srv.TLSConfig != nil {
			errc <- s.srv.ServeTLS(s.ln, "", "")
			return
		}
		errc <- s.srv.Serve(s.ln)
	}()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	err := s.srv.Shutdown(sctx)
	if e := <-errc; e != nil && !errors.Is(e, http.ErrServerClosed) && err == nil {
		err = e
	}
	return err
}

// Admin is a program's admin listener (AdminMux's routes) serving in the
// background until Stop.
type Admin struct {
	srv  *Server
	stop context.CancelFunc
	done chan error
}

// StartAdmin binds addr and serves AdminMux(reg, ready) on it.
func StartAdmin(addr string, reg *prometheus.Registry, ready ReadyFunc, log zerolog.Logger) (*Admin, error) {
	srv, err := Listen(addr, AdminMux(reg, ready), log)
	if err != nil {
		return nil, fmt.Errorf("METRICS_ADDR %s: %w", addr, err)
	}
	ctx, stop := context.WithCancel(context.Background())
	a := &Admin{srv: srv, stop: stop, done: make(chan error, 1)}
	go func() { a.done <- srv.Serve(ctx, 5*time.Second) }()
	return a, nil
}

// Addr is the bound address.
func (a *Admin) Addr() string { return a.srv.Addr() }

// Stop shuts the listener down gracefully and waits for it.
func (a *Admin) Stop() error {
	a.stop()
	return <-a.done
}
