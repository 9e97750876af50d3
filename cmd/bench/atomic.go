package main

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/synadia-io/orbit.go/jetstreamext"

	"github.com/esim-pipeline/thingspace-esim/internal/broker"
)

// The opt-in store measurement (`-only atomic`, `-only atomic-cluster`;
// BENCHMARKS.md lesson 15): how fast, at what CPU and with how many fsyncs
// nats-server stores status-event-shaped messages (the 332-byte accepted
// event, a subject per device, a Nats-Msg-Id and an Esim-Command-Seq each)
// when they come as synchronous publishes, as async publishes the way the
// dispatcher and the fan-out send them, as atomic batches (orbit.go's
// jetstreamext.PublishMsgBatch) of several sizes with one or several in
// flight, and as one fast batch (FastPublisher). Each variant gets a fresh
// server; the variants run in turn, b.s.rounds times, under sync_interval:
// always and under the default. A short semantics pass first records what
// a batch's callers see when it fails.

// callEvents is one dispatcher call's events (BATCH_MAX_DEVICES here).
const callEvents = 10_000

type storeMode int

const (
	modeSync   storeMode = iota // one publish at a time per worker, its ack awaited
	modeAsync                   // a group published async, every ack awaited, as the services do
	modeAtomic                  // a group as one atomic batch (PublishMsgBatch)
	modeFast                    // a group as one fast batch (FastPublisher)
)

// storeVariant is one way of storing events: workers goroutines, each
// storing groups of size events one group after the other until the
// window ends.
type storeVariant struct {
	key      string
	label    string
	mode     storeMode
	workers  int
	size     int
	maxBatch int // the server's batch size limit, when above its default
}

var allStoreVariants = []storeVariant{
	{key: "sync-64", label: "64 synchronous publishers (measurement 4's baseline)", mode: modeSync, workers: 64, size: 1},
	{key: "async-1x10000", label: "async, the dispatcher's shape: 10,000 a call, ≤ 4,096 in flight, all acks awaited", mode: modeAsync, workers: 1, size: callEvents},
	{key: "async-64x25", label: "async, the fan-out's shape: 64 workers of 25, each awaited", mode: modeAsync, workers: 64, size: 25},
	{key: "atomic-1x10", label: "atomic batches of 10, 1 in flight", mode: modeAtomic, workers: 1, size: 10},
	{key: "atomic-8x10", label: "atomic batches of 10, 8 in flight", mode: modeAtomic, workers: 8, size: 10},
	{key: "atomic-32x25", label: "atomic batches of 25, 32 in flight (the fan-out's shape within 50 per stream)", mode: modeAtomic, workers: 32, size: 25},
	{key: "atomic-1x100", label: "atomic batches of 100, 1 in flight", mode: modeAtomic, workers: 1, size: 100},
	{key: "atomic-8x100", label: "atomic batches of 100, 8 in flight", mode: modeAtomic, workers: 8, size: 100},
	{key: "atomic-1x1000", label: "atomic batches of 1,000 (the default limit), 1 in flight", mode: modeAtomic, workers: 1, size: 1000},
	{key: "atomic-4x1000", label: "atomic batches of 1,000, 4 in flight", mode: modeAtomic, workers: 4, size: 1000},
	{key: "atomic-8x1000", label: "atomic batches of 1,000, 8 in flight", mode: modeAtomic, workers: 8, size: 1000},
	{key: "atomic-1x10000", label: "atomic batches of 10,000 (max_msgs raised to 10,000), 1 in flight", mode: modeAtomic, workers: 1, size: callEvents, maxBatch: callEvents},
	{key: "fast-1x10000", label: "one fast batch (FastPublisher) per 10,000", mode: modeFast, workers: 1, size: callEvents},
}

// The default lists: every variant on one server; on the cluster, the
// baselines and the batches that did best on one server.
var (
	defaultAtomicVariants  = "sync-64,async-1x10000,async-64x25,atomic-1x10,atomic-8x10,atomic-32x25,atomic-1x100,atomic-8x100,atomic-1x1000,atomic-4x1000,atomic-1x10000,fast-1x10000"
	defaultClusterVariants = "sync-64,async-1x10000,async-64x25,atomic-32x25,atomic-1x1000,atomic-4x1000,atomic-1x10000"
)

// parseVariants picks the variants named in keys, in that order.
func parseVariants(keys string, all []storeVariant) ([]storeVariant, error) {
	var out []storeVariant
	for k := range strings.SplitSeq(keys, ",") {
		k = strings.TrimSpace(k)
		if k == "" {
			continue
		}
		i := slices.IndexFunc(all, func(v storeVariant) bool { return v.key == k })
		if i < 0 {
			return nil, fmt.Errorf("unknown variant %q", k)
		}
		out = append(out, all[i])
	}
	return out, nil
}

// storeRun is one variant's run.
type storeRun struct {
	v         storeVariant
	events    int64 // acknowledged as stored
	failed    int64
	groups    int64 // groups acknowledged (batches, for the batch modes)
	elapsed   time.Duration
	lat       []time.Duration // per event (per batch for atomic: every event waits for its commit), sorted
	serverCPU time.Duration   // every nats-server process, over the window
	benchCPU  time.Duration
	cores     map[string]float64
	sys       syscallCounts
	stored    uint64 // the status stream's messages at the end
	errs      map[string]int
}

func (r storeRun) rate() float64 {
	if r.elapsed <= 0 {
		return 0
	}
	return float64(r.events) / r.elapsed.Seconds()
}

func (r storeRun) serverPer1000() float64 {
	if r.events == 0 {
		return math.NaN()
	}
	return r.serverCPU.Seconds() / float64(r.events) * 1000
}

func (r storeRun) benchPer1000() float64 {
	if r.events == 0 {
		return math.NaN()
	}
	return r.benchCPU.Seconds() / float64(r.events) * 1000
}

// syncsPer1000 is fsync + fdatasync calls per 1,000 events stored.
func (r storeRun) syncsPer1000() float64 {
	if !r.sys.ok || r.events == 0 {
		return math.NaN()
	}
	return float64(r.sys.fsync+r.sys.fdatasync) / float64(r.events) * 1000
}

// syncsPerGroup is fsync + fdatasync calls per batch (per event for the
// modes that are not batches).
func (r storeRun) syncsPerGroup() float64 {
	if !r.sys.ok || r.groups == 0 {
		return math.NaN()
	}
	return float64(r.sys.fsync+r.sys.fdatasync) / float64(r.groups)
}

// eventMsgFor is status-event-shaped message i: the accepted event's body
// on a subject of its own, its eventId as Nats-Msg-Id, the expected stream
// and the command's sequence, as the dispatcher's publish sets them.
func (b *bench) eventMsgFor(prefix string, i int64) *nats.Msg {
	return &nats.Msg{
		Subject: "thingspace.profile.status.enable." + iccidOf(i),
		Data:    b.event,
		Header: nats.Header{
			nats.MsgIdHdr:                  []string{prefix + strconv.FormatInt(i, 10)},
			jetstream.ExpectedStreamHeader: []string{broker.StatusStream},
			"Esim-Command-Seq":             []string{strconv.FormatInt(i, 10)},
		},
	}
}

// enableBatches lets the status stream take atomic and fast batches. On a
// fresh cluster the server asked may not know the stream just created yet:
// "not found" is tried again too.
func enableBatches(ctx context.Context, js jetstream.JetStream) error {
	return broker.Retry(ctx, func(ctx context.Context) error {
		st, err := js.Stream(ctx, broker.StatusStream)
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			return fmt.Errorf("status stream not known yet: %v", err) // not an APIError: retried
		}
		if err != nil {
			return err
		}
		cfg := st.CachedInfo().Config
		cfg.AllowAtomicPublish, cfg.AllowBatchPublish = true, true
		_, err = js.UpdateStream(ctx, cfg)
		return err
	})
}

// storeEvents runs v against the connection's server(s) for window, with
// pids the nats-server processes to measure.
func (b *bench) storeEvents(ctx context.Context, js jetstream.JetStream, v storeVariant, window time.Duration, pids map[string]int) storeRun {
	r := storeRun{v: v, errs: map[string]int{}}
	prefix := fmt.Sprintf("bench-%s-", v.key)
	var next atomic.Int64
	var mu sync.Mutex
	var lastAck time.Time
	srvStart := sumCPU(pids)
	selfStart := selfCPU()
	meter := newCPUMeter(pids)
	counter := startSyscallCount(pids)
	start := time.Now()
	end := start.Add(window)
	var wg sync.WaitGroup
	for range v.workers {
		wg.Go(func() {
			var ok, failed, groups int64
			var lat []time.Duration
			errs := map[string]int{}
			var last time.Time
			fail := func(n int64, err error) {
				failed += n
				errs[errText(err)]++
			}
			for ctx.Err() == nil && time.Now().Before(end) {
				first := next.Add(int64(v.size)) - int64(v.size) + 1
				msgs := make([]*nats.Msg, v.size)
				for j := range msgs {
					msgs[j] = b.eventMsgFor(prefix, first+int64(j))
				}
				gctx, cancel := context.WithTimeout(ctx, 60*time.Second)
				switch v.mode {
				case modeSync:
					for _, m := range msgs {
						t0 := time.Now()
						if _, err := js.PublishMsg(gctx, m); err != nil {
							fail(1, err)
							continue
						}
						last = time.Now()
						lat = append(lat, last.Sub(t0))
						ok++
						groups++
					}
				case modeAsync:
					futs := make([]jetstream.PubAckFuture, 0, len(msgs))
					sent := make([]time.Time, 0, len(msgs))
					for _, m := range msgs {
						t0 := time.Now()
						f, err := js.PublishMsgAsync(m, jetstream.WithStallWait(10*time.Second))
						if err != nil {
							fail(1, err)
							continue
						}
						futs, sent = append(futs, f), append(sent, t0)
					}
					for i, f := range futs {
						select {
						case <-f.Ok():
							last = time.Now()
							lat = append(lat, last.Sub(sent[i]))
							ok++
							groups++
						case err := <-f.Err():
							fail(1, err)
						case <-gctx.Done():
							fail(1, gctx.Err())
						}
					}
				case modeAtomic:
					t0 := time.Now()
					if _, err := jetstreamext.PublishMsgBatch(gctx, js, msgs); err != nil {
						fail(int64(len(msgs)), err)
						pause(gctx, 10*time.Millisecond)
						break
					}
					last = time.Now()
					for range msgs {
						lat = append(lat, last.Sub(t0))
					}
					ok += int64(len(msgs))
					groups++
				case modeFast:
					n, err := fastBatch(gctx, js, msgs, &lat)
					ok += n
					if err != nil {
						fail(int64(len(msgs))-n, err)
						pause(gctx, 10*time.Millisecond)
						break
					}
					last = time.Now()
					groups++
				}
				cancel()
			}
			mu.Lock()
			r.events += ok
			r.failed += failed
			r.groups += groups
			r.lat = append(r.lat, lat...)
			for k, n := range errs {
				r.errs[k] += n
			}
			if last.After(lastAck) {
				lastAck = last
			}
			mu.Unlock()
		})
	}
	wg.Wait()
	r.sys = counter.stop()
	r.cores = meter.cores()
	r.serverCPU = sumCPU(pids) - srvStart
	r.benchCPU = selfCPU() - selfStart
	if !lastAck.IsZero() {
		r.elapsed = lastAck.Sub(start)
	}
	slices.Sort(r.lat)
	r.stored, _ = streamMsgs(ctx, js, broker.StatusStream)
	return r
}

// fastBatch stores msgs as one fast batch, each event's latency from its
// Add to the commit's ack.
func fastBatch(ctx context.Context, js jetstream.JetStream, msgs []*nats.Msg, lat *[]time.Duration) (int64, error) {
	fp, err := jetstreamext.NewFastPublisher(js)
	if err != nil {
		return 0, err
	}
	sent := make([]time.Time, len(msgs))
	for i, m := range msgs[:len(msgs)-1] {
		sent[i] = time.Now()
		if _, err := fp.AddMsg(m); err != nil {
			_, _ = fp.Close(ctx)
			return 0, err
		}
	}
	sent[len(msgs)-1] = time.Now()
	if _, err := fp.CommitMsg(ctx, msgs[len(msgs)-1]); err != nil {
		return 0, err
	}
	done := time.Now()
	for _, t := range sent {
		*lat = append(*lat, done.Sub(t))
	}
	return int64(len(msgs)), nil
}

// errText is an error's text without the ids that vary per message.
func errText(err error) string {
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		return fmt.Sprintf("%d %s", apiErr.ErrorCode, apiErr.Description)
	}
	s := err.Error()
	if len(s) > 80 {
		s = s[:80]
	}
	return s
}

func pause(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

func sumCPU(pids map[string]int) time.Duration {
	var t time.Duration
	for _, pid := range pids {
		c, _ := cpuTime(pid)
		t += c
	}
	return t
}

// syscallCounts are the nats-server processes' durability syscalls over a
// window, counted by `perf stat` on the syscall tracepoints.
type syscallCounts struct {
	ok        bool
	fsync     int64
	fdatasync int64
	osyncOpen int64 // files opened with O_SYNC or O_DSYNC: each write to them is a sync of its own
	mkdir     int64
}

type syscallCounter struct {
	cmd  *exec.Cmd
	out  string
	done chan struct{}
}

// startSyscallCount attaches perf stat to pids; without perf (or without
// access to the tracepoints) the counts stay unknown.
func startSyscallCount(pids map[string]int) *syscallCounter {
	perf, err := exec.LookPath("perf")
	if err != nil {
		return nil
	}
	list := make([]string, 0, len(pids))
	for _, pid := range pids {
		list = append(list, strconv.Itoa(pid))
	}
	f, err := os.CreateTemp("", "bench-perf-")
	if err != nil {
		return nil
	}
	f.Close()
	c := &syscallCounter{out: f.Name(), done: make(chan struct{})}
	c.cmd = exec.Command(perf, "stat", "-x,", "-o", c.out,
		"-e", "syscalls:sys_enter_fsync", "-e", "syscalls:sys_enter_fdatasync", "-e", "syscalls:sys_enter_mkdirat",
		"-e", "syscalls:sys_enter_openat", "--filter", "flags & 0x101000", // O_SYNC includes O_DSYNC's bit
		"-p", strings.Join(list, ","))
	if err := c.cmd.Start(); err != nil {
		os.Remove(c.out)
		return nil
	}
	go func() { _ = c.cmd.Wait(); close(c.done) }()
	// perf attaches within a few milliseconds; the window starts now.
	time.Sleep(50 * time.Millisecond)
	return c
}

func (c *syscallCounter) stop() syscallCounts {
	if c == nil {
		return syscallCounts{}
	}
	defer os.Remove(c.out)
	_ = c.cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-c.done:
	case <-time.After(5 * time.Second):
		_ = c.cmd.Process.Kill()
		<-c.done
	}
	b, err := os.ReadFile(c.out)
	if err != nil {
		return syscallCounts{}
	}
	return parsePerfStat(string(b))
}

// parsePerfStat reads `perf stat -x,` output: count,unit,event,...
func parsePerfStat(s string) syscallCounts {
	var c syscallCounts
	seen := 0
	for line := range strings.SplitSeq(s, "\n") {
		f := strings.Split(line, ",")
		if len(f) < 3 || strings.HasPrefix(line, "#") {
			continue
		}
		n, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			continue // "<not counted>", "<not supported>"
		}
		switch f[2] {
		case "syscalls:sys_enter_fsync":
			c.fsync = n
		case "syscalls:sys_enter_fdatasync":
			c.fdatasync = n
		case "syscalls:sys_enter_mkdirat":
			c.mkdir = n
		case "syscalls:sys_enter_openat":
			c.osyncOpen = n
		default:
			continue
		}
		seen++
	}
	c.ok = seen == 4
	return c
}

// measureAtomic runs the store variants on one server, sync always and
// default, after the semantics pass.
func (b *bench) measureAtomic(ctx context.Context, rep *report) error {
	keys := b.s.atomicVariants
	if keys == "" {
		keys = defaultAtomicVariants
	}
	vs, err := parseVariants(keys, allStoreVariants)
	if err != nil {
		return err
	}
	if lines, err := b.atomicSemantics(ctx); err != nil {
		rep.failures = append(rep.failures, "atomic semantics: "+err.Error())
	} else {
		rep.notes = append(rep.notes, "Atomic batch semantics, one server, sync always (each line: what was published; what the caller got; what the stream gained):\n\n"+strings.Join(lines, "\n"))
	}
	var errs []error
	for _, always := range []bool{true, false} {
		mode := map[bool]string{true: "sync always", false: "default sync"}[always]
		runs := map[string][]storeRun{}
		for i := range b.s.rounds {
			for _, v := range vs {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				name := fmt.Sprintf("atomic-%s-%s-%d", map[bool]string{true: "always", false: "default"}[always], v.key, i+1)
				r, err := b.storeRunOne(ctx, name, v, natsOptions{syncAlways: always, batchMaxMsgs: v.maxBatch})
				if err != nil {
					errs = append(errs, fmt.Errorf("%s: %w", name, err))
					continue
				}
				runs[v.key] = append(runs[v.key], r)
				rep.runs = append(rep.runs, r.info("A "+mode+": "+v.key+b.roundLabel(i), 1))
			}
		}
		rep.notes = append(rep.notes, storeTable("One server, "+mode, vs, runs))
	}
	return joinErrs(errs)
}

// storeRunOne runs v on a fresh server.
func (b *bench) storeRunOne(ctx context.Context, name string, v storeVariant, o natsOptions) (storeRun, error) {
	ns, dir, err := b.natsFor(ctx, name, "", o)
	if err != nil {
		return storeRun{}, err
	}
	defer func() {
		ns.stop(30 * time.Second)
		if !b.s.keep {
			_ = os.RemoveAll(filepath.Join(dir, "store"))
		}
	}()
	nc, js, err := connect(ns.url, jetstream.WithPublishAsyncMaxPending(4096), jetstream.WithPublishAsyncTimeout(10*time.Second))
	if err != nil {
		return storeRun{}, err
	}
	defer nc.Close()
	if err := enableBatches(ctx, js); err != nil {
		return storeRun{}, err
	}
	r := b.storeEvents(ctx, js, v, b.s.atomicWindow, map[string]int{"nats-server": ns.pid()})
	b.logStoreRun(name, r)
	return r, nil
}

func (b *bench) logStoreRun(name string, r storeRun) {
	b.log.Info().Str("run", name).Int64("events", r.events).Int64("failed", r.failed).Float64("per_s", math.Round(r.rate())).
		Float64("server_cpu_ms_per_1000", math.Round(1000*r.serverPer1000())).Float64("fsyncs_per_batch", r.syncsPerGroup()).
		Uint64("stored", r.stored).Msg("store run")
}

// info is r as a line of the runs table.
func (r storeRun) info(name string, servers int) runInfo {
	x := runInfo{name: name, rate: perSec(r.rate()), cores: r.cores}
	x.work = fmt.Sprintf("%s events acked in %s, %s failed; stream holds %s", count(r.events), r.elapsed.Round(time.Millisecond), count(r.failed), count(r.stored))
	if c := r.serverCPU + r.benchCPU; c > 0 {
		x.perCore = count(int64(math.Round(float64(r.events) / c.Seconds())))
	}
	notes := []string{fmt.Sprintf("nats-server %.1f ms CPU per 1,000 events", 1000*r.serverPer1000())}
	if servers > 1 {
		notes[0] = fmt.Sprintf("the %d nats-servers %.1f ms CPU per 1,000 events", servers, 1000*r.serverPer1000())
	}
	if r.sys.ok {
		notes = append(notes, fmt.Sprintf("%s fsync, %s fdatasync, %s O_SYNC opens, %s mkdir", count(r.sys.fsync), count(r.sys.fdatasync), count(r.sys.osyncOpen), count(r.sys.mkdir)))
	}
	notes = append(notes, fmt.Sprintf("p50 %s, p99 %s", ms(percentile(r.lat, 0.5)), ms(percentile(r.lat, 0.99))))
	for k, n := range r.errs {
		notes = append(notes, fmt.Sprintf("%d× %q", n, k))
	}
	x.notes = strings.Join(notes, "; ")
	return x
}

// storeTable is the medians of each variant's rounds, against the 64
// synchronous publishers and the dispatcher-shaped async publishes of the
// same runs.
func storeTable(title string, vs []storeVariant, runs map[string][]storeRun) string {
	med := func(key string, f func(storeRun) float64) float64 {
		var xs []float64
		for _, r := range runs[key] {
			if v := f(r); !math.IsNaN(v) {
				xs = append(xs, v)
			}
		}
		if len(xs) == 0 {
			return math.NaN()
		}
		slices.Sort(xs)
		return xs[(len(xs)-1)/2]
	}
	rate := func(r storeRun) float64 { return r.rate() }
	syncBase, asyncBase := med("sync-64", rate), med("async-1x10000", rate)
	var sb strings.Builder
	fmt.Fprintf(&sb, "%s, medians of %s (events/s of every round in run order):\n\n", title, "each variant's rounds")
	sb.WriteString("| variant | events/s | × 64 sync publishers | × async (dispatcher) | nats-server CPU ms / 1,000 events | bench CPU ms / 1,000 | fsyncs / 1,000 events | fsyncs per batch | publish→ack p50 / p99 | failed |\n")
	sb.WriteString("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n")
	for _, v := range vs {
		rs := runs[v.key]
		if len(rs) == 0 {
			continue
		}
		rates := make([]string, len(rs))
		var failed int64
		for i, r := range rs {
			rates[i] = perSec(r.rate())
			failed += r.failed
		}
		rt := med(v.key, rate)
		perGroup := "—"
		if v.mode == modeAtomic || v.mode == modeFast {
			perGroup = num(med(v.key, storeRun.syncsPerGroup), 2)
		}
		fmt.Fprintf(&sb, "| %s (`%s`) | %s (%s) | %s | %s | %s | %s | %s | %s | %s / %s | %s |\n",
			v.label, v.key, perSec(rt), strings.Join(rates, ", "), dash(ratio(rt, syncBase)), dash(ratio(rt, asyncBase)),
			num(1000*med(v.key, storeRun.serverPer1000), 1), num(1000*med(v.key, storeRun.benchPer1000), 1),
			num(med(v.key, storeRun.syncsPer1000), 1), perGroup,
			ms(time.Duration(med(v.key, func(r storeRun) float64 { return float64(percentile(r.lat, 0.5)) }))),
			ms(time.Duration(med(v.key, func(r storeRun) float64 { return float64(percentile(r.lat, 0.99)) }))),
			count(failed))
	}
	return sb.String()
}

func num(v float64, prec int) string {
	if math.IsNaN(v) {
		return "—"
	}
	return strconv.FormatFloat(v, 'f', prec, 64)
}
