package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/esim-pipeline/thingspace-esim/internal/broker"
	"github.com/esim-pipeline/thingspace-esim/internal/observability"
	"github.com/esim-pipeline/thingspace-esim/internal/simulator"
)

// bench holds what the measurements share: binaries, the work directory,
// pre-published stores, and results later measurements build on.
type bench struct {
	s       settings
	log     zerolog.Logger
	started time.Time
	root    string // module root
	work    string
	bin     string // built binaries
	self    string // this program, for roles
	natsBin string
	machine machine
	seed    *callbackGen
	event   []byte // a representative accepted event, for the baselines
	runs    int

	templates map[int]string // commands -> store directory holding them

	// Results later steps use.
	dispatchElapsed time.Duration
	ingestRSS       int64
	ingestBaseRSS   int64
}

func newBench(ctx context.Context, s settings, log zerolog.Logger) (*bench, error) {
	b := &bench{s: s, log: log, started: time.Now(), templates: map[int]string{}}
	out, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil || strings.TrimSpace(string(out)) == "" || strings.TrimSpace(string(out)) == os.DevNull {
		return nil, fmt.Errorf("run the bench inside the module (go env GOMOD: %v)", err)
	}
	b.root = filepath.Dir(strings.TrimSpace(string(out)))
	if b.self, err = os.Executable(); err != nil {
		return nil, err
	}
	if b.work, err = os.MkdirTemp("", "esim-bench-"); err != nil {
		return nil, err
	}
	b.bin = filepath.Join(b.work, "bin")
	b.natsBin = filepath.Join(b.bin, "nats-server")
	log.Info().Str("work", b.work).Msg("building nats-server, dispatcher and callback-ingest")
	builds := [][]string{
		{"build", "-o", b.natsBin, "github.com/nats-io/nats-server/v2"},
		{"build", "-o", b.bin + string(filepath.Separator), "./cmd/dispatcher", "./cmd/callback-ingest"},
	}
	for _, args := range builds {
		cmd := exec.CommandContext(ctx, "go", args...)
		cmd.Dir = b.root
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		if err := cmd.Run(); err != nil {
			b.close()
			return nil, fmt.Errorf("go %s: %w: %s", strings.Join(args, " "), err, stderr.String())
		}
	}
	if b.seed, err = newCallbackGen(filepath.Join(b.root, "internal", "thingspace", "testdata", "callback_enable.json")); err != nil {
		b.close()
		return nil, err
	}
	b.event = eventBody()
	b.machine = describeMachine(ctx, b.natsBin, b.work)
	log.Info().Str("load", b.machine.loadStart).Int("cores", b.machine.cores).Str("nats_server", b.machine.natsServer).
		Float64("fsync_us", b.machine.fsyncMicros).Msg("machine")
	return b, nil
}

func (b *bench) close() {
	if b.s.keep {
		b.log.Info().Str("work", b.work).Msg("work directory kept (logs, profiles)")
		return
	}
	_ = os.RemoveAll(b.work)
}

// enabled reports whether the step named runs in this bench. An opt-in
// step runs only when -only names it.
func (b *bench) enabled(name string, optIn bool) bool {
	if b.s.only == "" {
		return !optIn
	}
	for p := range strings.SplitSeq(b.s.only, ",") {
		if strings.TrimSpace(p) == name {
			return true
		}
	}
	return false
}

func (b *bench) runAll(ctx context.Context) *report {
	rep := &report{s: b.s}
	steps := []struct {
		name  string
		f     func(context.Context, *report) error
		optIn bool // not part of a plain `make bench`
	}{
		{"dispatch", b.measureDispatch, false},
		{"ingest", b.measureIngest, false},
		{"memory", b.measureMemory, false},
		{"sync", b.measureSync, false},
		{"sync-ingest", b.measureSyncIngest, false},
		{"profile", b.profilePass, false},
		{"atomic", b.measureAtomic, true},
		{"atomic-cluster", b.measureAtomicCluster, true},
	}
	for _, st := range steps {
		if !b.enabled(st.name, st.optIn) || (st.name == "profile" && !b.s.profile) {
			continue
		}
		if ctx.Err() != nil {
			rep.failures = append(rep.failures, st.name+": the bench deadline passed first")
			continue
		}
		start := time.Now()
		b.log.Info().Str("step", st.name).Msg("start")
		if err := st.f(ctx, rep); err != nil {
			b.log.Error().Err(err).Str("step", st.name).Msg("failed")
			rep.failures = append(rep.failures, fmt.Sprintf("%s: %v", st.name, err))
		}
		b.log.Info().Str("step", st.name).Dur("took", time.Since(start).Round(time.Millisecond)).Msg("done")
	}
	b.machine.loadEnd = loadavg()
	rep.m = b.machine
	rep.total = time.Since(b.started)
	return rep
}

// runDir is a new directory for one run.
func (b *bench) runDir(name string) (string, error) {
	b.runs++
	dir := filepath.Join(b.work, fmt.Sprintf("%02d-%s", b.runs, name))
	return dir, os.MkdirAll(dir, 0o755)
}

// natsFor starts a nats-server for one run on a fresh directory, holding a
// copy of the template store when one is given, and makes sure the streams
// exist.
func (b *bench) natsFor(ctx context.Context, name, template string, o natsOptions) (*natsServer, string, error) {
	dir, err := b.runDir(name)
	if err != nil {
		return nil, "", err
	}
	if template != "" {
		if err := copyDir(template, filepath.Join(dir, "store")); err != nil {
			return nil, "", fmt.Errorf("copy template store: %w", err)
		}
	}
	b.settle()
	ns, err := startNATS(ctx, b.natsBin, dir, o)
	if err != nil {
		return nil, "", err
	}
	nc, js, err := connect(ns.url)
	if err != nil {
		ns.stop(10 * time.Second)
		return nil, "", err
	}
	defer nc.Close()
	if err := broker.Ensure(ctx, js, broker.StreamSettings{}); err != nil {
		ns.stop(10 * time.Second)
		return nil, "", err
	}
	return ns, dir, nil
}

// settle writes back every dirty page before a run: the kernel flushes
// dirty data some 30 s after it was written, so without it a run pays
// for writing back what the runs before it stored (a gigabyte after
// measurement 1), at a cost to its own writes and CPU that varies with
// what ran before it.
func (b *bench) settle() {
	start := time.Now()
	syscall.Sync()
	b.log.Debug().Dur("took", time.Since(start).Round(time.Millisecond)).Msg("dirty pages written back")
}

// template returns a store directory holding n pre-published commands,
// publishing them once per bench.
func (b *bench) template(ctx context.Context, n int) (string, error) {
	if dir, ok := b.templates[n]; ok {
		return dir, nil
	}
	ns, dir, err := b.natsFor(ctx, fmt.Sprintf("template-%d", n), "", natsOptions{})
	if err != nil {
		return "", err
	}
	defer ns.stop(30 * time.Second)
	start := time.Now()
	if err := prepublish(ctx, ns.url, n); err != nil {
		return "", err
	}
	b.log.Info().Int("commands", n).Dur("took", time.Since(start).Round(time.Millisecond)).Msg("template store published")
	ns.stop(30 * time.Second)
	b.templates[n] = filepath.Join(dir, "store")
	return b.templates[n], nil
}

// prepublish publishes n single-device commands and checks the stream holds them.
func prepublish(ctx context.Context, url string, n int) error {
	nc, js, err := connect(url, jetstream.WithPublishAsyncMaxPending(8192))
	if err != nil {
		return err
	}
	defer nc.Close()
	buf := make([]byte, 0, 512)
	for i := 1; i <= n; i++ {
		buf = appendCommand(buf[:0], i)
		body := append([]byte(nil), buf...)
		for attempt := 0; ; attempt++ {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			_, err := js.PublishAsync(commandSubject, body)
			if err == nil {
				break
			}
			if attempt > 100 {
				return fmt.Errorf("pre-publish: %w", err)
			}
			select {
			case <-js.PublishAsyncComplete():
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(2 * time.Minute):
		return errors.New("pre-publish: acks missing after 2 minutes")
	}
	st, err := js.Stream(ctx, broker.CommandStream)
	if err != nil {
		return err
	}
	info, err := st.Info(ctx)
	if err != nil {
		return err
	}
	if info.State.Msgs != uint64(n) {
		return fmt.Errorf("pre-publish: stream holds %d commands, want %d", info.State.Msgs, n)
	}
	return nil
}

// startSim runs the ThingSpace simulator in this process: answers at once,
// no rate limit, no callback delivery (no listener is registered).
func (b *bench) startSim(ctx context.Context) (url string, stop func(), err error) {
	sim, err := simulator.New(simulator.Config{
		Logger:           zerolog.Nop(),
		HistoryLimit:     16,
		RequestRetention: time.Minute,
		Faults:           simulator.Faults{RatePerMinute: -1},
	})
	if err != nil {
		return "", nil, err
	}
	srv, err := observability.Listen("127.0.0.1:0", sim.Handler(), zerolog.Nop())
	if err != nil {
		return "", nil, err
	}
	sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(sctx, 5*time.Second) }()
	return "http://" + srv.Addr(), func() { cancel(); <-done; sim.Close() }, nil
}
