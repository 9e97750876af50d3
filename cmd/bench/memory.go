package main

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/esim-pipeline/thingspace-esim/internal/broker"
)

// measureMemory is measurement 3: the dispatcher's peak RSS over a backlog
// of commands it may only call ThingSpace for once a second; and the
// ingest's peak RSS from measurement 2.
func (b *bench) measureMemory(ctx context.Context, rep *report) error {
	n := b.s.backlog
	ns, dir, err := b.natsFor(ctx, "memory", "", natsOptions{})
	if err != nil {
		return err
	}
	defer ns.stop(30 * time.Second)
	start := time.Now()
	if err := prepublish(ctx, ns.url, n); err != nil {
		return err
	}
	b.log.Info().Int("commands", n).Dur("took", time.Since(start).Round(time.Millisecond)).Msg("backlog published")
	simURL, stopSim, err := b.startSim(ctx)
	if err != nil {
		return err
	}
	defer stopSim()
	p, err := startProc("dispatcher", filepath.Join(dir, "dispatcher.log"), filepath.Join(b.bin, "dispatcher"), nil, b.dispatcherEnv(ns.url, simURL, 1))
	if err != nil {
		return err
	}
	defer p.stop(30 * time.Second)
	t0, admin, err := p.awaitMessage(ctx, "dispatcher ready", "admin_addr", 60*time.Second)
	if err != nil {
		return err
	}
	meter := newCPUMeter(map[string]int{"nats-server": ns.pid(), "dispatcher": p.pid()})
	end := t0.Add(b.s.memFor)
	for time.Now().Before(end) {
		if err := p.exited(); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(min(time.Until(end), 500*time.Millisecond)):
		}
	}
	cores := meter.cores()
	rss, err := peakRSS(p.pid())
	if err != nil {
		return err
	}
	natsRSS, _ := peakRSS(ns.pid())
	m, _ := scrape(ctx, admin)
	nc, js, err := connect(ns.url)
	if err != nil {
		return err
	}
	defer nc.Close()
	events, _ := streamMsgs(ctx, js, broker.StatusStream)
	rep.runs = append(rep.runs, runInfo{
		name:  "3 dispatcher over a backlog, THINGSPACE_RATE=1",
		work:  fmt.Sprintf("%s commands waiting; ran %s", count(n), b.s.memFor),
		cores: cores, rss: fmt.Sprintf("dispatcher %s, nats-server %s", mib(rss), mib(natsRSS)),
		notes: fmt.Sprintf("%s accepted events, %.0f calls, %.0f commands held at the end", count(events),
			m["esim_dispatcher_batches_total"], m["esim_dispatcher_commands_held"]),
	})
	rep.add(row{
		measurement: fmt.Sprintf("3. Dispatcher peak RSS (VmHWM), %s commands waiting, 1 call/s, %s", count(n), b.s.memFor),
		measured:    mib(rss), goal: "< 256 MiB", met: yes(rss < 256<<20),
	})
	if b.ingestRSS > 0 {
		rep.add(row{
			measurement: "3. Callback-ingest peak RSS (VmHWM) during measurement 2 at its maximum",
			baseline:    mib(b.ingestBaseRSS) + " (bare handler)", measured: mib(b.ingestRSS),
		})
	}
	return nil
}

// measureSync is measurement 4's dispatcher half: measurement 1 again with
// every JetStream write fsynced (sync_interval: always), against baselines
// in the same mode.
func (b *bench) measureSync(ctx context.Context, rep *report) error {
	always := natsOptions{syncAlways: true}
	n := b.s.syncCommands
	tmpl, err := b.template(ctx, n)
	if err != nil {
		return err
	}
	var errs []error
	base, err := b.runDispatchBaseline(ctx, "sync-dispatch-baseline", tmpl, n, always)
	if err != nil {
		errs = append(errs, fmt.Errorf("dispatch baseline: %w", err))
	} else {
		rep.runs = append(rep.runs, runInfo{name: "4 always: baseline fetch, publish async, ack", work: base.work(), rate: perSec(base.rate()), cores: base.cores,
			perCore: perCPUText(base.rate(), base.cores, selfName)})
	}
	// The publishers and the dispatcher in turn, b.s.rounds times: both are
	// one fsync per event, and the disk's pace moves between runs.
	var pubRates []float64
	var dispRuns []dispatchRun
	for i := range b.s.rounds {
		round := b.roundLabel(i)
		pubs, pubInfo, err := b.runSyncPublishers(ctx, fmt.Sprintf("sync-publishers-%d", i+1), always, 64, b.s.load)
		if err != nil {
			errs = append(errs, fmt.Errorf("sync publishers: %w", err))
			break
		}
		pubInfo.name = "4 always: 64 synchronous publishers" + round
		rep.runs = append(rep.runs, pubInfo)
		// As the deploy files run it beside servers that sync every write.
		run, err := b.runDispatcher(ctx, fmt.Sprintf("sync-dispatch-%d", i+1), tmpl, n, always,
			dispatcherLaunch{env: []string{"STATUS_BATCH_MAX=1000"}})
		if err != nil {
			errs = append(errs, fmt.Errorf("dispatcher: %w", err))
			break
		}
		mean, full, batches := batchStats(run.metrics)
		rep.runs = append(rep.runs, runInfo{name: "4 always: dispatcher" + round, work: run.work(), rate: perSec(run.rate()), cores: run.cores,
			perCore: perCPUText(run.rate(), run.cores, "dispatcher"),
			notes: fmt.Sprintf("mean batch %.0f devices, %.0f%% of %.0f calls full; %s events stored in %s from the first to the last (%s)",
				mean, 100*full, batches, count(run.events), run.storing.Round(time.Millisecond), perSec(run.storeRate()))})
		pubRates, dispRuns = append(pubRates, pubs), append(dispRuns, run)
	}
	if len(dispRuns) > 0 { // a round adds to both or to neither
		rate := func(r float64) float64 { return r }
		meas := median(dispRuns, dispatchRun.storeRate)
		pubs := median(pubRates, rate)
		if b.s.rounds > 1 {
			rep.notes = append(rep.notes, fmt.Sprintf("Measurement 4's dispatcher and its 64 synchronous publishers ran %d times each, in turn; the table gives the median of each (events/s: publishers %s; dispatcher, first to last event stored, %s).",
				b.s.rounds, joinRates(pubRates, rate), joinRates(dispRuns, dispatchRun.storeRate)))
		}
		if base.done > 0 {
			rep.add(row{
				measurement: fmt.Sprintf("4. sync always: dispatcher, %s commands (commands/s) vs the fetch/publish-async/ack program", count(n)),
				baseline:    perSec(base.rate()), measured: perSec(meas.rate()), ratio: ratio(meas.rate(), base.rate()),
			})
		}
		if pubs > 0 {
			// Both sides at their steady rate: the publishers over their
			// window, the dispatcher from its first event stored to its last.
			stored := meas.storeRate()
			rep.add(row{
				measurement: "4. sync always: dispatcher accepted events stored (events/s, first to last event) vs 64 synchronous publishers",
				baseline:    perSec(pubs), measured: perSec(stored), ratio: ratio(stored, pubs),
				goal: "≥ 0.9× baseline", met: yes(stored >= 0.9*pubs),
			})
		}
	}
	return joinErrs(errs)
}

// measureSyncIngest is measurement 4's ingest half: the bare handler and
// callback-ingest against a nats-server at sync_interval: always.
func (b *bench) measureSyncIngest(ctx context.Context, rep *report) error {
	bases, meass, err := b.ingestRounds(ctx, rep, ingestPair{
		name: "sync-ingest", baseLabel: "4 always: bare handler", label: "4 always: callback-ingest",
		note: "Measurement 4's ingest", o: natsOptions{syncAlways: true},
	})
	if err != nil {
		return err
	}
	base, meas := median(bases, answered), median(meass, answered)
	rep.add(row{
		measurement: "4. sync always: callback ingest answered 200 (callbacks/s)",
		baseline:    perSec(base.res.rate()), measured: perSec(meas.res.rate()), ratio: ratio(meas.res.rate(), base.res.rate()),
		goal: "≥ 16,700/s", met: yes(meas.res.rate() >= 16_700),
	})
	rep.add(row{
		measurement: "4. sync always: callback fan-out, status events stored (events/s) vs callbacks answered over the same window",
		baseline:    perSec(meas.res.rate()), measured: perSec(meas.events), ratio: ratio(meas.events, meas.res.rate()),
		goal: "≥ 0.9× answered", met: yes(meas.events >= 0.9*meas.res.rate()),
	})
	return nil
}

func joinErrs(errs []error) error {
	if len(errs) == 0 {
		return nil
	}
	msg := ""
	for i, e := range errs {
		if i > 0 {
			msg += "; "
		}
		msg += e.Error()
	}
	return errors.New(msg)
}
