package main

import (
	"bufio"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/esim-pipeline/thingspace-esim/internal/broker"
	"github.com/esim-pipeline/thingspace-esim/internal/device"
	"github.com/esim-pipeline/thingspace-esim/internal/simulator"
	"github.com/esim-pipeline/thingspace-esim/internal/status"
)

const (
	commandSubject = "thingspace.profile.commands.enable"
	benchAccount   = "0000123456-00001"
	benchSmsrOid   = "1.3.6.1.4.1.31746.1.500.200.101.5"
	// baselineConsumer is the plain program's durable on the command stream.
	baselineConsumer = "bench-baseline"
	// heldCommands is what the dispatcher holds by default (3 full batches);
	// the baseline gets the same.
	heldCommands = 30_000
)

// appendPadded appends v in decimal, left-padded with zeros to width.
func appendPadded(b []byte, v int64, width int) []byte {
	var tmp [20]byte
	s := strconv.AppendInt(tmp[:0], v, 10)
	for i := len(s); i < width; i++ {
		b = append(b, '0')
	}
	return append(b, s...)
}

func iccidOf(i int64) string { return string(appendPadded([]byte("8914800000"), i, 10)) }
func eidOf(i int64) string   { return string(appendPadded([]byte("89049032"), i, 24)) }

// appendCommand appends command i: one device, about 250 bytes.
func appendCommand(b []byte, i int) []byte {
	b = append(b, `{"commandId":"bench-`...)
	b = appendPadded(b, int64(i), 10)
	b = append(b, `","accountName":"`+benchAccount+`","smsrOid":"`+benchSmsrOid+`","devices":[{"deviceIds":[{"kind":"eid","id":"`...)
	b = append(b, eidOf(int64(i))...)
	b = append(b, `"},{"kind":"iccid","id":"`...)
	b = append(b, iccidOf(int64(i))...)
	return append(b, `"}]}]}`...)
}

// eventBody is an accepted event as the dispatcher writes it, for the
// baselines to publish (about 400 bytes).
func eventBody() []byte {
	d := device.Set{}.With(device.EID, eidOf(1)).With(device.ICCID, iccidOf(1))
	id := "bench-0000000001"
	ev := status.Event{
		EventID:     status.CommandEventID(status.Accepted, id, "enable", d),
		CommandID:   id,
		RequestID:   "5b1d2a4e-6f3c-4e8a-9d7b-2c1f0e9a8b7c",
		Action:      "enable",
		AccountName: benchAccount,
		Device:      d,
		Status:      status.Accepted,
		OccurredAt:  time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC),
	}
	b, _ := json.Marshal(ev)
	return b
}

// eventMsg is the baselines' event i: its own subject and Nats-Msg-Id,
// checked against the status stream, as the dispatcher publishes.
func (b *bench) eventMsg(i int64) *nats.Msg {
	return &nats.Msg{
		Subject: "thingspace.profile.status.enable." + iccidOf(i),
		Data:    b.event,
		Header: nats.Header{
			nats.MsgIdHdr:                  []string{"bench-accepted-" + strconv.FormatInt(i, 10)},
			jetstream.ExpectedStreamHeader: []string{broker.StatusStream},
		},
	}
}

// dispatchRun is the outcome of one pass over pre-published commands.
type dispatchRun struct {
	n        int
	done     int // commands acknowledged
	elapsed  time.Duration
	events   uint64
	storing  time.Duration // from the first event stored to the last (server time)
	timedOut bool
	metrics  map[string]float64
	rss      int64
	cores    map[string]float64
}

func (r dispatchRun) rate() float64 {
	if r.elapsed <= 0 {
		return 0
	}
	return float64(r.done) / r.elapsed.Seconds()
}

// storeRate is events stored per second over the span in which they were
// stored: the steady rate, without the start (the first batch's fetch,
// decode and call) and the end (the last batch's acks).
func (r dispatchRun) storeRate() float64 {
	if r.storing <= 0 || r.events < 2 {
		return 0
	}
	return float64(r.events-1) / r.storing.Seconds()
}

func (r dispatchRun) work() string {
	s := fmt.Sprintf("%s of %s commands acked in %s", count(r.done), count(r.n), r.elapsed.Round(time.Millisecond))
	if r.timedOut {
		s += " (run limit reached)"
	}
	return s
}

var errRunLimit = errors.New("run limit reached")

// awaitConsumed polls the consumer until n commands were delivered and
// acknowledged, or deadline. It returns when it saw that and how many are
// acknowledged.
func awaitConsumed(ctx context.Context, js jetstream.JetStream, consumer string, n int, deadline time.Time, alive func() error) (time.Time, int, error) {
	var c jetstream.Consumer
	var last *jetstream.ConsumerInfo
	for {
		ictx, cancel := context.WithTimeout(ctx, 2*time.Second)
		if c == nil {
			// Missing until the program created it: asked again next round.
			c, _ = js.Consumer(ictx, broker.CommandStream, consumer)
		}
		if c != nil {
			if info, err := c.Info(ictx); err == nil {
				last = info
			}
		}
		cancel()
		now := time.Now()
		if last != nil && last.NumPending == 0 && last.NumAckPending == 0 && last.Delivered.Stream >= uint64(n) {
			return now, n, nil
		}
		if alive != nil {
			if err := alive(); err != nil {
				return now, 0, err
			}
		}
		if now.After(deadline) {
			done := 0
			if last != nil {
				done = int(last.AckFloor.Stream)
			}
			return now, done, errRunLimit
		}
		select {
		case <-ctx.Done():
			return time.Now(), 0, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func streamMsgs(ctx context.Context, js jetstream.JetStream, name string) (uint64, error) {
	n, _, err := streamSpan(ctx, js, name)
	return n, err
}

// streamSpan is the stream's message count and the time between its first
// and last message as the server stored them.
func streamSpan(ctx context.Context, js jetstream.JetStream, name string) (uint64, time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	st, err := js.Stream(ctx, name)
	if err != nil {
		return 0, 0, err
	}
	info, err := st.Info(ctx)
	if err != nil {
		return 0, 0, err
	}
	return info.State.Msgs, info.State.LastTime.Sub(info.State.FirstTime), nil
}

// dispatcherLaunch says which program runs the dispatcher.
type dispatcherLaunch struct {
	bin   string
	args  []string
	env   []string
	ready func(ns *natsServer) // at "dispatcher ready"
	done  func()               // once every command is acked
}

func (b *bench) dispatcherEnv(natsURL, simURL string, rate float64) []string {
	return append([]string{
		"NATS_URL=" + natsURL,
		"LOG_LEVEL=info",
		"THINGSPACE_BASE_URL=" + simURL,
		"THINGSPACE_CLIENT_ID=" + simulator.DemoClientID,
		"THINGSPACE_CLIENT_SECRET=" + simulator.DemoClientSecret,
		"THINGSPACE_USERNAME=" + simulator.DemoUsername,
		"THINGSPACE_PASSWORD=" + simulator.DemoPassword,
		"THINGSPACE_RATE=" + strconv.FormatFloat(rate, 'f', -1, 64),
		"BATCH_MAX_DEVICES=10000",
		"METRICS_ADDR=127.0.0.1:0",
	}, splitEnv(b.s.dispatcherEnv)...)
}

// splitEnv reads NAME=value,NAME=value.
func splitEnv(s string) []string {
	var out []string
	for kv := range strings.SplitSeq(s, ",") {
		if kv = strings.TrimSpace(kv); kv != "" {
			out = append(out, kv)
		}
	}
	return out
}

// runDispatcher runs the dispatcher process over the template's n commands,
// the simulator answering at once, no rate limit.
func (b *bench) runDispatcher(ctx context.Context, name, template string, n int, o natsOptions, l dispatcherLaunch) (dispatchRun, error) {
	r := dispatchRun{n: n}
	ns, dir, err := b.natsFor(ctx, name, template, o)
	if err != nil {
		return r, err
	}
	defer ns.stop(30 * time.Second)
	simURL, stopSim, err := b.startSim(ctx)
	if err != nil {
		return r, err
	}
	defer stopSim()
	if l.bin == "" {
		l.bin = filepath.Join(b.bin, "dispatcher")
	}
	p, err := startProc("dispatcher", filepath.Join(dir, "dispatcher.log"), l.bin, l.args, append(b.dispatcherEnv(ns.url, simURL, 0), l.env...))
	if err != nil {
		return r, err
	}
	defer p.stop(30 * time.Second)
	t0, admin, err := p.awaitMessage(ctx, "dispatcher ready", "admin_addr", 60*time.Second)
	if err != nil {
		return r, err
	}
	meter := newCPUMeter(map[string]int{"nats-server": ns.pid(), "dispatcher": p.pid()})
	if l.ready != nil {
		l.ready(ns)
	}
	nc, js, err := connect(ns.url)
	if err != nil {
		return r, err
	}
	defer nc.Close()
	end, done, err := awaitConsumed(ctx, js, "dispatcher", n, t0.Add(b.s.runTimeout), p.exited)
	r.cores = meter.cores()
	if l.done != nil {
		l.done()
	}
	r.elapsed, r.done = end.Sub(t0), done
	if errors.Is(err, errRunLimit) {
		r.timedOut = true
	} else if err != nil {
		return r, err
	}
	r.events, r.storing, _ = streamSpan(ctx, js, broker.StatusStream)
	r.metrics, err = scrape(ctx, admin)
	if err != nil {
		b.log.Warn().Err(err).Msg("dispatcher metrics")
	}
	r.rss, _ = peakRSS(p.pid())
	b.log.Info().Str("run", name).Int("acked", r.done).Dur("elapsed", r.elapsed).Float64("per_s", math.Round(r.rate())).
		Uint64("events", r.events).Msg("dispatcher run")
	return r, nil
}

// runDispatchBaseline is the plain nats.go program: fetch a command, publish
// its event asynchronously, ack the command once the event's ack arrived.
func (b *bench) runDispatchBaseline(ctx context.Context, name, template string, n int, o natsOptions) (dispatchRun, error) {
	r := dispatchRun{n: n}
	ns, _, err := b.natsFor(ctx, name, template, o)
	if err != nil {
		return r, err
	}
	defer ns.stop(30 * time.Second)
	nc, js, err := connect(ns.url, jetstream.WithPublishAsyncMaxPending(4096))
	if err != nil {
		return r, err
	}
	defer nc.Close()
	cons, err := js.CreateOrUpdateConsumer(ctx, broker.CommandStream, jetstream.ConsumerConfig{
		Durable:       baselineConsumer,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       2 * time.Minute,
		MaxAckPending: heldCommands,
		FilterSubject: broker.CommandSubjects,
		DeliverPolicy: jetstream.DeliverAllPolicy,
	})
	if err != nil {
		return r, err
	}
	meter := newCPUMeter(map[string]int{"nats-server": ns.pid()})
	t0 := time.Now()
	runCtx, stop := context.WithDeadline(ctx, t0.Add(b.s.runTimeout))
	defer stop()
	type inflight struct {
		msg jetstream.Msg
		ack jetstream.PubAckFuture
	}
	q := make(chan inflight, 8192)
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-runCtx.Done():
				return
			case it := <-q:
				select {
				case <-it.ack.Ok():
					_ = it.msg.Ack()
				case <-it.ack.Err():
					_ = it.msg.Nak()
				case <-runCtx.Done():
					return
				}
			}
		}
	})
	cc, err := cons.Consume(func(msg jetstream.Msg) {
		meta, err := msg.Metadata()
		if err != nil {
			_ = msg.Nak()
			return
		}
		m := b.eventMsg(int64(meta.Sequence.Stream))
		for runCtx.Err() == nil {
			f, err := js.PublishMsgAsync(m)
			if err != nil { // stalled: acks are behind
				time.Sleep(time.Millisecond)
				continue
			}
			select {
			case q <- inflight{msg, f}:
			case <-runCtx.Done():
			}
			return
		}
	}, jetstream.PullMaxMessages(1000))
	if err != nil {
		return r, err
	}
	end, done, err := awaitConsumed(runCtx, js, baselineConsumer, n, t0.Add(b.s.runTimeout), nil)
	r.cores = meter.cores()
	cc.Stop()
	stop()
	wg.Wait()
	r.elapsed, r.done = end.Sub(t0), done
	if errors.Is(err, errRunLimit) || (err != nil && ctx.Err() == nil) {
		r.timedOut = true
	} else if err != nil {
		return r, err
	}
	r.events, r.storing, _ = streamSpan(ctx, js, broker.StatusStream)
	b.log.Info().Str("run", name).Int("acked", r.done).Dur("elapsed", r.elapsed).Float64("per_s", math.Round(r.rate())).Msg("baseline run")
	return r, nil
}

// runSyncPublishers is workers goroutines each publishing events one at a
// time, waiting for every ack, for d.
func (b *bench) runSyncPublishers(ctx context.Context, name string, o natsOptions, workers int, d time.Duration) (float64, runInfo, error) {
	info := runInfo{name: name}
	ns, _, err := b.natsFor(ctx, name, "", o)
	if err != nil {
		return 0, info, err
	}
	defer ns.stop(30 * time.Second)
	nc, js, err := connect(ns.url)
	if err != nil {
		return 0, info, err
	}
	defer nc.Close()
	meter := newCPUMeter(map[string]int{"nats-server": ns.pid()})
	var next, ok, failed atomic.Int64
	start := time.Now()
	end := start.Add(d)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for time.Now().Before(end) && ctx.Err() == nil {
				pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				_, err := js.PublishMsg(pctx, b.eventMsg(next.Add(1)))
				cancel()
				if err != nil {
					failed.Add(1)
					continue
				}
				ok.Add(1)
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	info.cores = meter.cores()
	rate := float64(ok.Load()) / elapsed.Seconds()
	info.work = fmt.Sprintf("%s events in %s (%d failed)", count(ok.Load()), elapsed.Round(time.Millisecond), failed.Load())
	info.rate = perSec(rate)
	info.perCore = perCPUText(rate, info.cores, selfName)
	b.log.Info().Str("run", name).Int64("events", ok.Load()).Float64("per_s", math.Round(rate)).Msg("sync publishers")
	return rate, info, nil
}

// scrape reads a Prometheus text page: each metric name (labels dropped)
// to the sum of its samples.
func scrape(ctx context.Context, addr string) (map[string]float64, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		parseMetricLine(sc.Text(), out)
	}
	return out, sc.Err()
}

func parseMetricLine(line string, out map[string]float64) {
	if line == "" || strings.HasPrefix(line, "#") {
		return
	}
	i := strings.IndexAny(line, "{ ")
	if i < 0 {
		return
	}
	name, rest := line[:i], line[i:]
	if j := strings.LastIndexByte(rest, '}'); j >= 0 {
		rest = rest[j+1:]
	}
	f := strings.Fields(rest)
	if len(f) == 0 {
		return
	}
	v, err := strconv.ParseFloat(f[0], 64)
	if err != nil {
		return
	}
	out[name] += v
}

// measureDispatch is measurement 1: the fetch/publish/ack program and the
// dispatcher in turn, b.s.rounds times (a single pair moved by up to 1.3x
// between runs); the table takes the median of each side.
func (b *bench) measureDispatch(ctx context.Context, rep *report) error {
	n := b.s.commands
	tmpl, err := b.template(ctx, n)
	if err != nil {
		return err
	}
	var bases, runs []dispatchRun
	for i := range b.s.rounds {
		round := b.roundLabel(i)
		base, err := b.runDispatchBaseline(ctx, fmt.Sprintf("dispatch-baseline-%d", i+1), tmpl, n, natsOptions{})
		if err != nil {
			return fmt.Errorf("baseline: %w", err)
		}
		rep.runs = append(rep.runs, runInfo{name: "1 baseline: fetch, publish async, ack" + round, work: base.work(), rate: perSec(base.rate()), cores: base.cores,
			perCore: perCPUText(base.rate(), base.cores, selfName),
			notes:   fmt.Sprintf("%s events stored; event body %d bytes", count(base.events), len(b.event))})
		meas, err := b.runDispatcher(ctx, fmt.Sprintf("dispatch-%d", i+1), tmpl, n, natsOptions{}, dispatcherLaunch{})
		if err != nil {
			return fmt.Errorf("dispatcher: %w", err)
		}
		mean, full, batches := batchStats(meas.metrics)
		rep.runs = append(rep.runs, runInfo{name: "1 dispatcher" + round, work: meas.work(), rate: perSec(meas.rate()), cores: meas.cores, rss: "dispatcher " + mib(meas.rss),
			perCore: perCPUText(meas.rate(), meas.cores, "dispatcher"),
			notes: fmt.Sprintf("%s accepted events stored; %.0f calls of %s devices on average, %.0f%% full, %s per call, of which the simulator answering %s",
				count(meas.events), batches, count(int64(math.Round(mean))), 100*full, ms(meas.elapsed/time.Duration(max(batches, 1))), ms(callTime(meas.metrics)))})
		bases, runs = append(bases, base), append(runs, meas)
	}
	base, meas := median(bases, dispatchRun.rate), median(runs, dispatchRun.rate)
	b.dispatchElapsed = meas.elapsed
	if b.s.rounds > 1 {
		rep.notes = append(rep.notes, fmt.Sprintf("Measurement 1's program and dispatcher ran %d times each, in turn; the table gives the median of each (commands/s: program %s; dispatcher %s).",
			b.s.rounds, joinRates(bases, dispatchRun.rate), joinRates(runs, dispatchRun.rate)))
	}
	rt := meas.rate() / base.rate()
	rep.add(row{
		measurement: fmt.Sprintf("1. Dispatcher: %s pre-published single-device commands to accepted events (commands/s)", count(n)),
		baseline:    perSec(base.rate()), measured: perSec(meas.rate()),
		ratio: ratios(meas.rate(), base.rate(), perCPU(meas.rate(), meas.cores, "dispatcher"), perCPU(base.rate(), base.cores, selfName)),
		goal:  "≥ 0.5× baseline", met: yes(rt >= 0.5 && !meas.timedOut),
	})
	// The share of full batches should not depend on the run: the table
	// takes the run with the fewest.
	fullShare := func(r dispatchRun) float64 { _, f, _ := batchStats(r.metrics); return f }
	worst := slices.MinFunc(runs, func(a, b dispatchRun) int { return cmp.Compare(fullShare(a), fullShare(b)) })
	mean, full, batches := batchStats(worst.metrics)
	rep.add(row{
		measurement: "1. Dispatcher batches under backlog: mean devices per call, share of calls full",
		measured:    fmt.Sprintf("%s devices, %.1f%% full (%.0f calls)", count(int64(math.Round(mean))), 100*full, batches),
		goal:        "≥ 95% full", met: yes(full >= 0.95),
	})
	return nil
}

// batchStats reads mean batch size, share of full batches and the number
// of batches from the dispatcher's metrics.
func batchStats(m map[string]float64) (mean, full, batches float64) {
	if c := m["esim_dispatcher_batch_devices_count"]; c > 0 {
		mean = m["esim_dispatcher_batch_devices_sum"] / c
	}
	batches = m["esim_dispatcher_batches_total"]
	if batches > 0 {
		full = m["esim_dispatcher_batches_full_total"] / batches
	}
	return mean, full, batches
}

// callTime is the mean ThingSpace call latency the dispatcher measured.
func callTime(m map[string]float64) time.Duration {
	c := m["esim_dispatcher_thingspace_call_seconds_count"]
	if c == 0 {
		return 0
	}
	return time.Duration(m["esim_dispatcher_thingspace_call_seconds_sum"] / c * float64(time.Second))
}
