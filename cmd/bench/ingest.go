package main

import (
	"cmp"
	"context"
	"fmt"
	"math"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/esim-pipeline/thingspace-esim/internal/broker"
	"github.com/esim-pipeline/thingspace-esim/internal/correlation"
	"github.com/esim-pipeline/thingspace-esim/internal/device"
)

// ingestKind is what answers the callbacks.
type ingestKind int

const (
	ingestReal     ingestKind = iota // the callback-ingest binary
	ingestBaseline                   // the bare handler (role baseline-ingest)
	ingestProfiled                   // callback.Run with a CPU profile (role profiled-ingest)
)

// loadRun is the outcome of one load run.
type loadRun struct {
	res       loadResult
	events    float64 // events stored per second during the window
	eventsWin uint64
	rawWin    uint64        // raw messages stored in the callback stream during the window
	backlog   uint64        // callbacks not yet fanned out at the window's end
	drain     time.Duration // from the window's end until nothing was left
	drained   bool
	redeliv   int     // most raw messages awaiting their ack after a second delivery, seen while draining
	dups      float64 // events the fan-out found stored already (a callback handled twice)
	retries   float64 // fan-out runs that handed their message back
	storeWait float64 // mean seconds from a callback's receipt to its store's ack
	rss       int64
	natsRSS   int64
	cores     map[string]float64
}

type ingestLaunch struct {
	kind    ingestKind
	rate    float64
	o       natsOptions
	profile string                                // CPU profile path for ingestProfiled
	onStart func(ns *natsServer, w time.Duration) // at the window's start
	onEnd   func()
}

// putRecords stores the requestId records the load generator's callbacks
// name, as the dispatcher leaves them once their accepted events are stored
// (published: the fan-out takes them at first sight).
func putRecords(ctx context.Context, js jetstream.JetStream) error {
	store, err := correlation.Open(ctx, js)
	if err != nil {
		return err
	}
	now := time.Now().UTC()
	for r := range int64(recordCount) {
		rec := &correlation.Record{RequestID: requestID(r), Action: "enable", AccountName: benchAccount, SubmittedAt: now, Published: true,
			Devices: make([]correlation.Entry, perRequest)}
		for j := range int64(perRequest) {
			i := r*perRequest + j
			rec.Devices[j] = correlation.Entry{CommandID: fmt.Sprintf("bench-%010d", i), Device: device.Set{}.With(device.ICCID, iccidOf(i))}
		}
		if err := store.Put(ctx, rec); err != nil {
			return err
		}
	}
	return nil
}

func (b *bench) runIngest(ctx context.Context, name string, l ingestLaunch) (loadRun, error) {
	var r loadRun
	ns, dir, err := b.natsFor(ctx, name, "", l.o)
	if err != nil {
		return r, err
	}
	defer ns.stop(30 * time.Second)
	nc, js, err := connect(ns.url)
	if err != nil {
		return r, err
	}
	defer nc.Close()
	env := []string{"NATS_URL=" + ns.url}
	bin, args := filepath.Join(b.bin, "callback-ingest"), []string(nil)
	switch l.kind {
	case ingestBaseline:
		bin, args = b.self, []string{roleBaselineIngest}
	case ingestProfiled:
		bin, args = b.self, []string{roleProfiledIngest}
		env = append(env, envCPUProfile+"="+l.profile)
	}
	if l.kind != ingestBaseline {
		if err := putRecords(ctx, js); err != nil {
			return r, fmt.Errorf("records: %w", err)
		}
		env = append(env, "LISTEN_ADDR=127.0.0.1:0", "METRICS_ADDR=127.0.0.1:0", "LOG_LEVEL=info",
			"CORRELATION_GRACE=1ms") // no wait for records that are missing
		if l.o.syncAlways {
			env = append(env, "STATUS_BATCH_MAX=1000") // as the deploy files run it beside servers that sync every write
		}
		env = append(env, splitEnv(b.s.ingestEnv)...)
	}
	p, err := startProc("ingest", filepath.Join(dir, "ingest.log"), bin, args, env)
	if err != nil {
		return r, err
	}
	defer p.stop(30 * time.Second)
	_, addr, err := p.awaitMessage(ctx, "ready", "callback_addr", 60*time.Second)
	if err != nil {
		return r, err
	}
	_, admin, _ := p.awaitMessage(ctx, "ready", "admin_addr", time.Second) // none for the bare handler
	var meter *cpuMeter
	var ev0, ev1, raw0, raw1 uint64
	var t0, t1 time.Time
	spec := loadSpec{
		addr: addr, conns: b.s.conns, rate: l.rate, warmup: b.s.warmup, window: b.s.load,
		onStart: func() {
			meter = newCPUMeter(map[string]int{"nats-server": ns.pid(), "ingest": p.pid()})
			t0 = time.Now()
			ev0, _ = streamMsgs(ctx, js, broker.StatusStream)
			raw0, _ = streamMsgs(ctx, js, broker.CallbackStream)
			if l.onStart != nil {
				l.onStart(ns, b.s.load)
			}
		},
		onEnd: func() {
			ev1, _ = streamMsgs(ctx, js, broker.StatusStream)
			raw1, _ = streamMsgs(ctx, js, broker.CallbackStream)
			t1 = time.Now()
			if meter != nil {
				r.cores = meter.cores()
			}
			if l.onEnd != nil {
				l.onEnd()
			}
		},
	}
	r.res, err = runLoad(ctx, b.seed, spec)
	if err != nil {
		return r, fmt.Errorf("%w; %v", err, p.exited())
	}
	r.rss, _ = peakRSS(p.pid())
	r.natsRSS, _ = peakRSS(ns.pid())
	if l.kind != ingestBaseline && !t1.IsZero() {
		r.eventsWin = ev1 - ev0
		r.rawWin = raw1 - raw0
		r.events = float64(ev1-ev0) / t1.Sub(t0).Seconds()
		r.backlog, r.drain, r.drained, r.redeliv = b.awaitFanout(ctx, js, t1)
		if m, err := scrape(ctx, admin); err == nil {
			r.dups, r.retries = m["esim_ingest_events_duplicate_total"], m["esim_ingest_fanout_retries_total"]
			if n := m["esim_ingest_callback_store_seconds_count"]; n > 0 {
				r.storeWait = m["esim_ingest_callback_store_seconds_sum"] / n
			}
		}
	}
	b.log.Info().Str("run", name).Float64("answered_per_s", math.Round(r.res.rate())).Float64("events_per_s", math.Round(r.events)).
		Dur("p50", percentile(r.res.lat, 0.5)).Dur("p99", percentile(r.res.lat, 0.99)).Int64("errors", r.res.errs+r.res.bad).
		Msg("load run")
	return r, nil
}

// awaitFanout waits until the fan-out consumer has nothing pending, and
// says how much was left at from, how long it took from then and the most
// messages awaiting their ack after a second delivery it saw meanwhile (the
// consumer counts only those still pending).
func (b *bench) awaitFanout(ctx context.Context, js jetstream.JetStream, from time.Time) (backlog uint64, took time.Duration, ok bool, redelivered int) {
	deadline := time.Now().Add(b.s.runTimeout)
	first := true
	for time.Now().Before(deadline) && ctx.Err() == nil {
		ictx, cancel := context.WithTimeout(ctx, 2*time.Second)
		c, err := js.Consumer(ictx, broker.CallbackStream, broker.CallbackFanoutConsumer)
		var info *jetstream.ConsumerInfo
		if err == nil {
			info, err = c.Info(ictx)
		}
		cancel()
		if err == nil {
			left := info.NumPending + uint64(info.NumAckPending)
			if first {
				backlog, first = left, false
			}
			redelivered = max(redelivered, info.NumRedelivered)
			if left == 0 {
				return backlog, time.Since(from), true, redelivered
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return backlog, time.Since(from), false, redelivered
}

func (r loadRun) info(name string, k ingestKind) runInfo {
	x := runInfo{
		name: name,
		work: fmt.Sprintf("%s answered 200 in %s (%d other answers, %d errors)", count(r.res.ok), r.res.elapsed.Round(time.Millisecond), r.res.bad, r.res.errs),
		rate: perSec(r.res.rate()), cores: r.cores, perCore: perCPUText(r.res.rate(), r.cores, "ingest"),
		rss: fmt.Sprintf("ingest %s, nats-server %s", mib(r.rss), mib(r.natsRSS)),
	}
	x.notes = fmt.Sprintf("p50 %s, p99 %s, max %s", ms(percentile(r.res.lat, 0.5)), ms(percentile(r.res.lat, 0.99)), ms(percentile(r.res.lat, 1)))
	if k != ingestBaseline {
		if r.rawWin > 0 {
			x.notes += fmt.Sprintf("; raw messages stored %s (%.1f callbacks each)", count(r.rawWin), float64(r.res.ok)/float64(r.rawWin))
		}
		if r.storeWait > 0 {
			x.notes += fmt.Sprintf("; receipt to stored %.1f ms on average", r.storeWait*1000)
		}
		x.notes += fmt.Sprintf("; events %s in the window (%s); fan-out backlog at the end %s", count(r.eventsWin), perSec(r.events), count(r.backlog))
		if r.drained {
			x.notes += fmt.Sprintf(", drained %s later", r.drain.Round(10*time.Millisecond))
		} else {
			x.notes += ", not drained within the run limit"
		}
		if r.redeliv > 0 {
			x.notes += fmt.Sprintf("; up to %s raw messages delivered a second time awaited their ack", count(r.redeliv))
		}
		if r.dups > 0 || r.retries > 0 {
			x.notes += fmt.Sprintf("; fan-out: %s events already stored, %s messages handed back", count(int64(r.dups)), count(int64(r.retries)))
		}
	}
	return x
}

// measureIngest is measurement 2: closed loop at the maximum, the bare
// handler and callback-ingest taken in turn b.s.rounds times (the machine's
// neighbours move a single run by up to 2x; the median of each side
// counts), then open loop at half of each median.
func (b *bench) measureIngest(ctx context.Context, rep *report) error {
	bases, meass, err := b.ingestRounds(ctx, rep, ingestPair{
		name: "ingest", baseLabel: "2 baseline: bare handler, publish and await ack", label: "2 callback-ingest",
		note: "Measurement 2's closed loop",
	})
	if err != nil {
		return err
	}
	for i := range bases {
		b.ingestBaseRSS = max(b.ingestBaseRSS, bases[i].rss)
		b.ingestRSS = max(b.ingestRSS, meass[i].rss)
	}
	base, meas := median(bases, answered), median(meass, answered)

	rep.add(row{
		measurement: fmt.Sprintf("2. Callback ingest, %d keep-alive connections, closed loop: answered 200 (callbacks/s)", b.s.conns),
		baseline:    perSec(base.res.rate()), measured: perSec(meas.res.rate()),
		ratio: ratios(meas.res.rate(), base.res.rate(), perCPU(meas.res.rate(), meas.cores, "ingest"), perCPU(base.res.rate(), base.cores, "ingest")),
		goal:  "≥ 16,700/s", met: yes(meas.res.rate() >= 16_700),
	})
	rep.add(row{
		measurement: "2. Callback fan-out during that load: status events stored (events/s)",
		measured:    perSec(meas.events), ratio: ratio(meas.events, meas.res.rate()) + " of answered",
		goal: "≥ 16,700/s", met: yes(meas.events >= 16_700),
	})
	rep.add(row{
		measurement: "2. Callback answer latency at that maximum, p50 / p99",
		baseline:    ms(percentile(base.res.lat, 0.5)) + " / " + ms(percentile(base.res.lat, 0.99)),
		measured:    ms(percentile(meas.res.lat, 0.5)) + " / " + ms(percentile(meas.res.lat, 0.99)),
	})

	baseHalf, err := b.runIngest(ctx, "ingest-baseline-half", ingestLaunch{kind: ingestBaseline, rate: base.res.rate() / 2})
	if err != nil {
		return fmt.Errorf("baseline at half load: %w", err)
	}
	rep.runs = append(rep.runs, baseHalf.info(fmt.Sprintf("2 baseline, open loop at %s", perSec(base.res.rate()/2)), ingestBaseline))
	half, err := b.runIngest(ctx, "ingest-half", ingestLaunch{kind: ingestReal, rate: meas.res.rate() / 2})
	if err != nil {
		return fmt.Errorf("callback-ingest at half load: %w", err)
	}
	rep.runs = append(rep.runs, half.info(fmt.Sprintf("2 callback-ingest, open loop at %s", perSec(meas.res.rate()/2)), ingestReal))
	p99 := percentile(half.res.lat, 0.99)
	rep.add(row{
		measurement: "2. Callback answer p99, open loop at half of each one's maximum",
		baseline:    ms(percentile(baseHalf.res.lat, 0.99)) + " at " + perSec(base.res.rate()/2),
		measured:    ms(p99) + " at " + perSec(meas.res.rate()/2),
		goal:        "< 20 ms", met: yes(p99 > 0 && p99 < 20*time.Millisecond),
	})
	return nil
}

// ingestPair names one closed-loop comparison of the bare handler and
// callback-ingest: its runs' directories, labels in the runs table, the
// note's subject and the server's options.
type ingestPair struct {
	name, baseLabel, label, note string
	o                            natsOptions
}

// ingestRounds runs the bare handler and callback-ingest in turn
// b.s.rounds times, lists every run and notes every rate.
func (b *bench) ingestRounds(ctx context.Context, rep *report, r ingestPair) (bases, meass []loadRun, err error) {
	for i := range b.s.rounds {
		round := b.roundLabel(i)
		base, err := b.runIngest(ctx, fmt.Sprintf("%s-baseline-%d", r.name, i+1), ingestLaunch{kind: ingestBaseline, o: r.o})
		if err != nil {
			return nil, nil, fmt.Errorf("baseline: %w", err)
		}
		rep.runs = append(rep.runs, base.info(r.baseLabel+round, ingestBaseline))
		meas, err := b.runIngest(ctx, fmt.Sprintf("%s-%d", r.name, i+1), ingestLaunch{kind: ingestReal, o: r.o})
		if err != nil {
			return nil, nil, fmt.Errorf("callback-ingest: %w", err)
		}
		rep.runs = append(rep.runs, meas.info(r.label+round, ingestReal))
		bases, meass = append(bases, base), append(meass, meas)
	}
	if b.s.rounds > 1 {
		rep.notes = append(rep.notes, fmt.Sprintf("%s ran %d times on each side, in turn; the table gives the median run of each (answered/s: bare handler %s, callback-ingest %s).",
			r.note, b.s.rounds, joinRates(bases, answered), joinRates(meass, answered)))
	}
	return bases, meass, nil
}

// median is the element of xs with the median rate (the lower middle of
// an even count).
func median[T any](xs []T, rate func(T) float64) T {
	sorted := slices.Clone(xs)
	slices.SortFunc(sorted, func(a, b T) int { return cmp.Compare(rate(a), rate(b)) })
	return sorted[(len(sorted)-1)/2]
}

// joinRates lists the rates of xs in run order.
func joinRates[T any](xs []T, rate func(T) float64) string {
	out := make([]string, len(xs))
	for i, x := range xs {
		out[i] = perSec(rate(x))
	}
	return strings.Join(out, ", ")
}

func answered(r loadRun) float64 { return r.res.rate() }

// roundLabel names round i in a run's name when there are several.
func (b *bench) roundLabel(i int) string {
	if b.s.rounds < 2 {
		return ""
	}
	return fmt.Sprintf(" (round %d of %d)", i+1, b.s.rounds)
}
