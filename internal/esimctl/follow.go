package esimctl

import (
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/esim-pipeline/thingspace-esim/internal/broker"
	"github.com/esim-pipeline/thingspace-esim/internal/status"
)

// Tally is what is known of a run's devices: the latest event of each (a
// final event is never replaced by a non-final one) and counts by status.
type Tally struct {
	plan   *Plan
	latest []*status.Event
	final  int
	counts map[status.Status]int
}

func newTally(p *Plan) *Tally {
	return &Tally{plan: p, latest: make([]*status.Event, len(p.Devices)), counts: map[status.Status]int{}}
}

// Total is the number of distinct devices.
func (t *Tally) Total() int { return len(t.latest) }

// Final is the number of devices with a final event.
func (t *Tally) Final() int { return t.final }

// Done reports whether every device has a final event.
func (t *Tally) Done() bool { return t.final == len(t.latest) }

// Count is the number of devices whose latest event has status st.
func (t *Tally) Count(st status.Status) int { return t.counts[st] }

// Waiting is the number of devices with no event yet.
func (t *Tally) Waiting() int {
	n := len(t.latest)
	for _, c := range t.counts {
		n -= c
	}
	return n
}

// add takes one event of the run; it reports false for an event naming no
// device of the run.
func (t *Tally) add(ev *status.Event) bool {
	i, ok := t.plan.device(ev.Device.Key())
	if !ok {
		return false
	}
	cur := t.latest[i]
	if cur != nil {
		if cur.Final && !ev.Status.Final() {
			return true
		}
		t.counts[cur.Status]--
		if cur.Final {
			t.final--
		}
	}
	ev.Final = ev.Status.Final()
	t.latest[i] = ev
	t.counts[ev.Status]++
	if ev.Final {
		t.final++
	}
	return true
}

// Summary words the counts: "2497 succeeded, 3 rejected".
func (t *Tally) Summary() string {
	var parts []string
	for _, st := range status.Statuses {
		if n := t.counts[st]; n > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", n, st))
		}
	}
	if w := t.Waiting(); w > 0 {
		parts = append(parts, fmt.Sprintf("%d waiting", w))
	}
	return strings.Join(parts, ", ")
}

// Succeeded reports whether every device succeeded.
func (t *Tally) Succeeded() bool { return t.counts[status.Succeeded] == len(t.latest) }

// Reasons counts the devices that did not succeed by status and reason code,
// most frequent first.
func (t *Tally) Reasons() []string {
	n := map[string]int{}
	for _, ev := range t.latest {
		if ev == nil || ev.Status == status.Succeeded {
			continue
		}
		k := string(ev.Status)
		if ev.Reason != nil && ev.Reason.Code != "" {
			k += " " + ev.Reason.Code
		}
		n[k]++
	}
	keys := make([]string, 0, len(n))
	for k := range n {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		if n[keys[i]] != n[keys[j]] {
			return n[keys[i]] > n[keys[j]]
		}
		return keys[i] < keys[j]
	})
	out := make([]string, len(keys))
	for i, k := range keys {
		out[i] = fmt.Sprintf("%d %s", n[k], k)
	}
	return out
}

// ResultsHeader is the results file's header.
var ResultsHeader = []string{"iccid", "eid", "imei", "status", "reason_code", "reason_message", "request_id", "occurred_at"}

// WriteResults writes one row per input row, in input order, to path
// (through a temporary file, so a reader never sees half of it).
func (t *Tally) WriteResults(path string) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, ".esimctl-results-*")
	if err != nil {
		return fmt.Errorf("results: %w", err)
	}
	defer os.Remove(f.Name())
	w := csv.NewWriter(f)
	_ = w.Write(ResultsHeader)
	for i, row := range t.plan.Rows {
		rec := []string{row.ICCID, row.EID, row.IMEI, "", "", "", "", ""}
		if ev := t.latest[t.plan.RowDevice[i]]; ev != nil {
			rec[3] = string(ev.Status)
			if ev.Reason != nil {
				rec[4], rec[5] = ev.Reason.Code, ev.Reason.Message
			}
			rec[6] = ev.RequestID
			if !ev.OccurredAt.IsZero() {
				rec[7] = ev.OccurredAt.UTC().Format(time.RFC3339Nano)
			}
		}
		_ = w.Write(rec)
	}
	w.Flush()
	if err := w.Error(); err != nil {
		_ = f.Close()
		return fmt.Errorf("results %s: %w", path, err)
	}
	if err := f.Chmod(0o644); err != nil {
		_ = f.Close()
		return fmt.Errorf("results %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("results %s: %w", path, err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return fmt.Errorf("results %s: %w", path, err)
	}
	return nil
}

// ErrInterrupted reports that following stopped because ctx ended; the run
// itself goes on.
var ErrInterrupted = errors.New("stopped following")

// follow reads the run's status events from rec.StatusStartSeq on, with an
// ordered consumer filtered to the action's subjects, until every device has
// a final event or ctx ends (ErrInterrupted).
func follow(ctx context.Context, js jetstream.JetStream, p *Plan, rec *Record, prog reporter, log zerolog.Logger) (*Tally, error) {
	cfg := jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{status.SubjectPrefix + "." + status.Token(string(p.Spec.Action)) + ".*"},
	}
	if rec.StatusStartSeq > 0 {
		cfg.DeliverPolicy = jetstream.DeliverByStartSequencePolicy
		cfg.OptStartSeq = rec.StatusStartSeq
	}
	cons, err := js.OrderedConsumer(ctx, broker.StatusStream, cfg)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ErrInterrupted
		}
		return nil, fmt.Errorf("following %s: %w", broker.StatusStream, err)
	}
	it, err := cons.Messages()
	if err != nil {
		return nil, fmt.Errorf("following %s: %w", broker.StatusStream, err)
	}
	defer it.Stop()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	prefix := CommandPrefix(p.RunID)
	events := make(chan *status.Event, 256)
	failed := make(chan error, 1)
	go func() {
		defer close(events)
		for {
			m, err := it.Next()
			if err != nil {
				if !errors.Is(err, jetstream.ErrMsgIteratorClosed) {
					failed <- err
				}
				return
			}
			var ev status.Event
			if err := json.Unmarshal(m.Data(), &ev); err != nil {
				log.Warn().Err(err).Str("subject", m.Subject()).Msg("skipping an undecodable status event")
				continue
			}
			if !strings.HasPrefix(ev.CommandID, prefix) {
				continue
			}
			select {
			case events <- &ev:
			case <-ctx.Done():
				return
			}
		}
	}()

	t := newTally(p)
	prog.start(t)
	tick := time.NewTicker(prog.interval())
	defer tick.Stop()
	for !t.Done() {
		select {
		case <-tick.C:
			prog.tick(t)
		case <-ctx.Done():
			prog.stop(t, false)
			return t, ErrInterrupted
		case err := <-failed:
			prog.stop(t, false)
			return t, fmt.Errorf("following %s: %w", broker.StatusStream, err)
		case ev, ok := <-events:
			if !ok {
				events = nil // the reader stopped: failed or ctx says why
				continue
			}
			if !t.add(ev) {
				log.Warn().Str("command_id", ev.CommandID).Str("device", ev.Device.String()).
					Msg("an event of this run names a device the run does not have")
				continue
			}
			prog.update(t)
		}
	}
	prog.stop(t, true)
	return t, nil
}
