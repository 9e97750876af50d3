package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"strings"
	"sync"
	"time"
)

// profilePass runs the dispatcher measurement and the ingest's closed-loop
// load again with CPU profiles of every process: the service (this binary
// in a role, running the same code as cmd/dispatcher and
// cmd/callback-ingest), nats-server (its prof_port) and this process
// (simulator or load generator). It reports each profile's top functions.
func (b *bench) profilePass(ctx context.Context, rep *report) error {
	dir := filepath.Join(b.work, "profiles")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	var errs []error
	if err := b.profileDispatcher(ctx, rep, dir); err != nil {
		errs = append(errs, fmt.Errorf("dispatcher: %w", err))
	}
	if err := b.profileIngest(ctx, rep, dir); err != nil {
		errs = append(errs, fmt.Errorf("ingest: %w", err))
	}
	rep.notes = append(rep.notes, fmt.Sprintf("Profiles were taken in a separate pass (same settings as measurements 1 and 2); they are in `%s` with `-keep`.", dir))
	return joinErrs(errs)
}

// selfProfile profiles this process until the returned stop is called.
func selfProfile(path string) (stop func(), err error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, err
	}
	var once sync.Once
	return func() { once.Do(func() { pprof.StopCPUProfile(); f.Close() }) }, nil
}

func (b *bench) profileDispatcher(ctx context.Context, rep *report, dir string) error {
	n := b.s.commands
	tmpl, err := b.template(ctx, n)
	if err != nil {
		return err
	}
	expect := b.dispatchElapsed
	if expect <= 0 {
		expect = 15 * time.Second
	}
	expect = min(max(expect, 3*time.Second), 30*time.Second)
	svcProf := filepath.Join(dir, "dispatcher.cpu.pprof")
	natsProf := filepath.Join(dir, "nats-server-dispatch.cpu.pprof")
	selfProf := filepath.Join(dir, "bench-simulator.cpu.pprof")
	var wg sync.WaitGroup
	var natsErr error
	stopSelf := func() {}
	r, err := b.runDispatcher(ctx, "profile-dispatch", tmpl, n, natsOptions{profile: true}, dispatcherLaunch{
		bin: b.self, args: []string{roleProfiledDispatch}, env: []string{envCPUProfile + "=" + svcProf},
		ready: func(ns *natsServer) {
			wg.Go(func() { natsErr = ns.cpuProfile(ctx, expect, natsProf) })
			if s, err := selfProfile(selfProf); err == nil {
				stopSelf = s
			}
		},
		done: func() { stopSelf() },
	})
	stopSelf()
	wg.Wait() // before the server stops
	if err != nil {
		return err
	}
	rep.runs = append(rep.runs, runInfo{name: "profile: dispatcher (in-process copy with pprof)", work: r.work(), rate: perSec(r.rate()), cores: r.cores,
		perCore: perCPUText(r.rate(), r.cores, "dispatcher")})
	// The service's profile is written when it exits: runDispatcher stopped it.
	b.addTop(ctx, rep, "Dispatcher (measurement 1, the service code)", svcProf, true)
	if natsErr == nil {
		b.addTop(ctx, rep, fmt.Sprintf("nats-server during the dispatcher run (first %s)", expect.Round(time.Second)), natsProf, false)
	} else {
		b.log.Warn().Err(natsErr).Msg("nats-server profile")
	}
	b.addTop(ctx, rep, "Bench process during the dispatcher run (the simulator answering)", selfProf, false)
	return nil
}

func (b *bench) profileIngest(ctx context.Context, rep *report, dir string) error {
	svcProf := filepath.Join(dir, "callback-ingest.cpu.pprof")
	natsProf := filepath.Join(dir, "nats-server-ingest.cpu.pprof")
	selfProf := filepath.Join(dir, "bench-loadgen.cpu.pprof")
	var wg sync.WaitGroup
	var natsErr error
	stopSelf := func() {}
	r, err := b.runIngest(ctx, "profile-ingest", ingestLaunch{
		kind: ingestProfiled, profile: svcProf, o: natsOptions{profile: true},
		onStart: func(ns *natsServer, w time.Duration) {
			wg.Go(func() { natsErr = ns.cpuProfile(ctx, w, natsProf) })
			if s, err := selfProfile(selfProf); err == nil {
				stopSelf = s
			}
		},
		onEnd: func() { stopSelf() },
	})
	stopSelf()
	wg.Wait()
	if err != nil {
		return err
	}
	rep.runs = append(rep.runs, r.info("profile: callback-ingest (in-process copy with pprof)", ingestProfiled))
	b.addTop(ctx, rep, "Callback-ingest (measurement 2, the service code; the whole process life)", svcProf, true)
	if natsErr == nil {
		b.addTop(ctx, rep, "nats-server during the ingest load window", natsProf, false)
	} else {
		b.log.Warn().Err(natsErr).Msg("nats-server profile")
	}
	b.addTop(ctx, rep, "Bench process during the ingest load window (the load generator)", selfProf, false)
	return nil
}

// modulePath selects this module's functions in a profile.
const modulePath = "thingspace-esim/"

// addTop puts the top functions of a profile in the report: flat, and for
// the services also this module's functions by cumulative time, which name
// the code to change.
func (b *bench) addTop(ctx context.Context, rep *report, title, path string, own bool) {
	top, err := pprofTop(ctx, path, "-top", "-nodecount=14")
	if err != nil {
		b.log.Warn().Err(err).Str("profile", path).Msg("pprof")
		return
	}
	if own {
		if cum, err := pprofTop(ctx, path, "-top", "-cum", "-nodecount=12", "-show="+modulePath); err == nil {
			top += "\n\nThis module's functions, by cumulative time:\n" + cum
		}
	}
	rep.profiles = append(rep.profiles, profileTop{title: title, file: filepath.Base(path), top: top})
}

// pprofTop runs go tool pprof and keeps its summary and table.
func pprofTop(ctx context.Context, path string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "go", append(append([]string{"tool", "pprof"}, args...), path)...).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("%w: %s", err, out)
	}
	var keep []string
	for line := range strings.SplitSeq(strings.TrimSpace(string(out)), "\n") {
		for _, p := range []string{"File:", "Build ID:", "Type:", "Time:", "Active filters:", "   show="} {
			if strings.HasPrefix(line, p) {
				line = ""
			}
		}
		if line != "" {
			keep = append(keep, line)
		}
	}
	return strings.Join(keep, "\n"), nil
}
