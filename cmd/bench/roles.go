package main

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"runtime/pprof"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/esim-pipeline/thingspace-esim/internal/broker"
	"github.com/esim-pipeline/thingspace-esim/internal/callback"
	"github.com/esim-pipeline/thingspace-esim/internal/config"
	"github.com/esim-pipeline/thingspace-esim/internal/dispatch"
	"github.com/esim-pipeline/thingspace-esim/internal/observability"
	"github.com/esim-pipeline/thingspace-esim/internal/stack"
)

// Roles: this binary run again as a process of its own, by the bench.
const (
	roleBaselineIngest    = "baseline-ingest"
	roleProfiledIngest    = "profiled-ingest"
	roleProfiledDispatch  = "profiled-dispatcher"
	envCPUProfile         = "BENCH_CPU_PROFILE"
	envAllocProfileSuffix = ".allocs" // the heap profile goes next to the CPU one
)

var roles = map[string]func(ctx context.Context, getenv func(string) string, stdout io.Writer) error{
	roleBaselineIngest:   baselineIngest,
	roleProfiledIngest:   profiledIngest,
	roleProfiledDispatch: profiledDispatcher,
}

// baselineIngest is the bare HTTP handler: read the body, publish it to the
// callback stream, answer 200 once JetStream acked. Its address goes to
// stdout as the "ready" log line's callback_addr.
func baselineIngest(ctx context.Context, getenv func(string) string, stdout io.Writer) error {
	log := zerolog.New(stdout).With().Timestamp().Logger()
	nc, err := nats.Connect(getenv("NATS_URL"), nats.Name("bench-baseline-ingest"))
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /callbacks", func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, callback.MaxBody))
		if err != nil {
			http.Error(w, "cannot read body", http.StatusBadRequest)
			return
		}
		pctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
		defer cancel()
		if _, err := js.Publish(pctx, broker.CallbackSubject, body); err != nil {
			http.Error(w, "cannot store", http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"status":"stored"}`))
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	log.Info().Str("callback_addr", ln.Addr().String()).Msg("ready")
	select {
	case <-ctx.Done():
	case err := <-done:
		return err
	}
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// profiled runs f with a CPU profile written to $BENCH_CPU_PROFILE and an
// allocation profile next to it when f returns.
func profiled(getenv func(string) string, f func() error) error {
	path := getenv(envCPUProfile)
	if path == "" {
		return errors.New(envCPUProfile + " is required")
	}
	out, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := pprof.StartCPUProfile(out); err != nil {
		out.Close()
		return err
	}
	runErr := f()
	pprof.StopCPUProfile()
	if err := out.Close(); err != nil && runErr == nil {
		runErr = err
	}
	if a, err := os.Create(path + envAllocProfileSuffix); err == nil {
		_ = pprof.Lookup("allocs").WriteTo(a, 0)
		_ = a.Close()
	}
	return runErr
}

// profiledIngest is cmd/callback-ingest's run with a CPU profile.
func profiledIngest(ctx context.Context, getenv func(string) string, stdout io.Writer) error {
	var cfg callback.Config
	set := config.NewSet("callback-ingest", io.Discard)
	cfg.Declare(set)
	if err := set.Parse(nil, getenv); err != nil {
		return err
	}
	log, err := observability.NewLogger(stdout, cfg.LogLevel, "callback-ingest")
	if err != nil {
		return err
	}
	return profiled(getenv, func() error { return callback.Run(ctx, cfg, log) })
}

// profiledDispatcher is a dispatcher wired as cmd/dispatcher's run wires
// it (internal/stack), with a CPU profile.
func profiledDispatcher(ctx context.Context, getenv func(string) string, stdout io.Writer) error {
	var cfg dispatch.Config
	set := config.NewSet("dispatcher", io.Discard)
	cfg.Declare(set)
	if err := set.Parse(nil, getenv); err != nil {
		return err
	}
	log, err := observability.NewLogger(stdout, cfg.LogLevel, "dispatcher")
	if err != nil {
		return err
	}
	return profiled(getenv, func() error {
		d, err := stack.StartDispatcher(cfg, log)
		if err != nil {
			return err
		}
		select {
		case <-ctx.Done():
		case <-d.Done():
		}
		return d.Stop()
	})
}
