// Package stack runs the pipeline's programs inside one process on the code
// their mains run: the ThingSpace simulator over HTTP, the callback-ingest
// and the dispatcher. cmd/devstack and the tests (through pipelinetest)
// start them here. Each Start function returns once its part is ready; Stop
// ends it and waits.
//
// The dispatcher is wired here as cmd/dispatcher's run wires it (a NATS
// connection, its readiness, the admin listener, the ThingSpace client),
// with the hooks a test needs.
package stack

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/esim-pipeline/thingspace-esim/internal/broker"
	"github.com/esim-pipeline/thingspace-esim/internal/callback"
	"github.com/esim-pipeline/thingspace-esim/internal/dispatch"
	"github.com/esim-pipeline/thingspace-esim/internal/observability"
	"github.com/esim-pipeline/thingspace-esim/internal/simulator"
	"github.com/esim-pipeline/thingspace-esim/internal/thingspace"
)

// readyWithin bounds how long a part may take to become ready.
const readyWithin = 30 * time.Second

// part is a goroutine running one program until its context ends.
type part struct {
	cancel context.CancelFunc
	ended  chan struct{}
	err    error // what the program returned, once ended is closed
}

// run starts f; f calls ready once it is ready. run returns when it is, or
// with f's error when f ends first.
func run(name string, f func(ctx context.Context, ready func()) error) (*part, error) {
	ctx, cancel := context.WithCancel(context.Background())
	p := &part{cancel: cancel, ended: make(chan struct{})}
	up := make(chan struct{})
	var upOnce sync.Once
	go func() {
		p.err = f(ctx, func() { upOnce.Do(func() { close(up) }) })
		close(p.ended)
	}()
	select {
	case <-up:
		return p, nil
	case <-p.ended:
		cancel()
		err := p.err
		if err == nil {
			err = errors.New("stopped")
		}
		return nil, fmt.Errorf("%s at start: %w", name, err)
	case <-time.After(readyWithin):
		cancel()
		<-p.ended
		return nil, fmt.Errorf("%s not ready within %s", name, readyWithin)
	}
}

// Done is closed once the program has ended, asked to or on its own.
func (p *part) Done() <-chan struct{} { return p.ended }

// Stop ends the program, waits for it and returns what it returned; it may
// be called again.
func (p *part) Stop() error {
	p.cancel()
	<-p.ended
	return p.err
}

// Simulator is the ThingSpace simulator served over HTTP.
type Simulator struct {
	*simulator.Server
	URL string
	*part
}

// StartSimulator serves a simulator of cfg on addr ("127.0.0.1:0" picks a
// port); wrap, when not nil, stands in front of its handler.
func StartSimulator(cfg simulator.Config, addr string, wrap func(http.Handler) http.Handler) (*Simulator, error) {
	sim, err := simulator.New(cfg)
	if err != nil {
		return nil, err
	}
	var h http.Handler = sim.Handler()
	if wrap != nil {
		h = wrap(h)
	}
	srv, err := observability.Listen(addr, h, cfg.Logger)
	if err != nil {
		return nil, fmt.Errorf("simulator on %s: %w", addr, err)
	}
	sim.Start()
	p, err := run("simulator", func(ctx context.Context, ready func()) error {
		ready()
		defer sim.Close()
		return srv.Serve(ctx, 5*time.Second)
	})
	if err != nil {
		return nil, err
	}
	return &Simulator{Server: sim, URL: "http://" + srv.Addr(), part: p}, nil
}

// Ingest is a callback-ingest.
type Ingest struct {
	callback.Addrs
	*part
}

// StartIngest runs the callback-ingest of cfg.
func StartIngest(cfg callback.Config, log zerolog.Logger, opts ...callback.Option) (*Ingest, error) {
	in := &Ingest{}
	p, err := run("callback-ingest", func(ctx context.Context, ready func()) error {
		return callback.Run(ctx, cfg, log, append(opts, callback.OnReady(func(a callback.Addrs) { in.Addrs = a; ready() }))...)
	})
	if err != nil {
		return nil, err
	}
	in.part = p
	return in, nil
}

// CallbackURL is where ThingSpace posts to this ingest.
func (in *Ingest) CallbackURL() string { return "http://" + in.Callback + "/callbacks" }

// Dispatcher is a dispatcher with its own NATS connection and admin
// listener.
type Dispatcher struct {
	*dispatch.Service
	AdminAddr string
	*part
}

// StartDispatcher wires and runs a dispatcher of cfg.
func StartDispatcher(cfg dispatch.Config, log zerolog.Logger, opts ...dispatch.Option) (*Dispatcher, error) {
	d := &Dispatcher{}
	p, err := run("dispatcher", func(ctx context.Context, up func()) error {
		nc, err := broker.Connect(ctx, cfg.NATS, "esim-dispatcher", log)
		if err != nil {
			return err
		}
		defer nc.Close()
		ready := broker.NewReadiness(nc)
		reg := observability.NewRegistry()
		admin, err := observability.StartAdmin(cfg.MetricsAddr, reg, ready.Check, log)
		if err != nil {
			return err
		}
		defer func() { _ = admin.Stop() }()
		d.AdminAddr = admin.Addr()
		ts, err := thingspace.New(cfg.ThingSpace(log))
		if err != nil {
			return err
		}
		opts := append([]dispatch.Option{dispatch.WithRegistry(reg)}, opts...)
		svc, err := dispatch.New(cfg, nc, ts, log, append(opts, dispatch.OnReady(func() {
			ready.SetReady()
			log.Info().Str("admin_addr", d.AdminAddr).Msg("dispatcher ready")
			up()
		}))...)
		if err != nil {
			return err
		}
		d.Service = svc
		err = svc.Run(ctx)
		_ = nc.Drain()
		return err
	})
	if err != nil {
		return nil, err
	}
	d.part = p
	return d, nil
}
