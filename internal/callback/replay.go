package callback

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/esim-pipeline/thingspace-esim/internal/broker"
	"github.com/esim-pipeline/thingspace-esim/internal/correlation"
	"github.com/esim-pipeline/thingspace-esim/internal/status"
	"github.com/esim-pipeline/thingspace-esim/internal/statuspub"
)

// ReplayOptions choose the stored callbacks a replay re-runs.
type ReplayOptions struct {
	// Since replays callbacks stored at or after this time; zero means all.
	Since time.Time
	// FromSeq replays from this stream sequence instead, when not zero.
	FromSeq uint64
	// DryRun counts what would be published and publishes nothing.
	DryRun bool
	// Settings are the replicas and storage of the EID index bucket if the
	// replay creates it (STREAM_REPLICAS).
	Settings broker.StreamSettings
}

// ReplayStats say what a replay did.
type ReplayStats struct {
	Callbacks   int // raw callbacks read
	Published   int // new events stored
	Existing    int // events the status stream already had (same eventId)
	Unparseable int // callbacks the parser still refuses (left alone)
	// Index is the EID index rebuilt from the status events stored since
	// the same time (all of them without Since), the replayed ones too.
	Index IndexStats
}

// Replay re-runs the fan-out over the raw callbacks kept in the callback
// stream, after a parser fix say, without duplicates: an event whose eventId
// is already on its subject in the status stream is not published again,
// however old it is (the stream's duplicate window covers only 20 minutes).
// It reads the stream up to its last message at the start, then writes the
// EID index of the status events (broker.EIDBucket, created if missing:
// this is how a lost index comes back), and returns.
func Replay(ctx context.Context, js jetstream.JetStream, opts ReplayOptions, log zerolog.Logger) (ReplayStats, error) {
	st, err := replayCallbacks(ctx, js, opts, log)
	if err != nil {
		return st, err
	}
	if !opts.DryRun {
		if err := broker.EnsureBucket(ctx, js, broker.EIDBucketConfig(opts.Settings)); err != nil {
			return st, err
		}
	}
	st.Index, err = rebuildIndex(ctx, js, opts.Since, opts.DryRun)
	if err != nil {
		return st, fmt.Errorf("EID index: %w", err)
	}
	return st, nil
}

func replayCallbacks(ctx context.Context, js jetstream.JetStream, opts ReplayOptions, log zerolog.Logger) (ReplayStats, error) {
	var st ReplayStats
	raw, err := js.Stream(ctx, broker.CallbackStream)
	if err != nil {
		return st, fmt.Errorf("stream %s: %w", broker.CallbackStream, err)
	}
	info, err := raw.Info(ctx)
	if err != nil {
		return st, err
	}
	last := info.State.LastSeq
	statusStream, err := js.Stream(ctx, broker.StatusStream)
	if err != nil {
		return st, fmt.Errorf("stream %s: %w", broker.StatusStream, err)
	}
	store, err := correlation.Open(ctx, js)
	if err != nil {
		return st, err
	}
	pub := statuspub.New(js, statuspub.Config{Timeout: 10 * time.Second})
	defer pub.Close()
	f := &fanout{
		js:      js,
		pub:     pub,
		status:  statusStream,
		records: newRecords(store, 1024, time.Second),
		timeout: 10 * time.Second,
		now:     time.Now,
		m:       newMetrics(prometheus.NewRegistry()),
		log:     log,
	}
	cfg := jetstream.OrderedConsumerConfig{FilterSubjects: []string{broker.CallbackSubject}}
	switch {
	case opts.FromSeq > 0:
		cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, opts.FromSeq
	case !opts.Since.IsZero():
		cfg.DeliverPolicy, cfg.OptStartTime = jetstream.DeliverByStartTimePolicy, &opts.Since
	}
	if last == 0 {
		return st, nil
	}
	cons, err := raw.OrderedConsumer(ctx, cfg)
	if err != nil {
		return st, err
	}
	seen := map[string]map[string]bool{} // subject -> eventIds on it
	for {
		msg, err := cons.Next(jetstream.FetchMaxWait(5 * time.Second))
		if errors.Is(err, nats.ErrTimeout) || errors.Is(err, jetstream.ErrNoMessages) {
			return st, nil
		}
		if err != nil {
			return st, err
		}
		meta, err := msg.Metadata()
		if err != nil {
			return st, err
		}
		received := meta.Timestamp
		if t, err := time.Parse(time.RFC3339Nano, msg.Headers().Get(HeaderReceivedAt)); err == nil {
			received = t
		}
		items := []rawCallback{{Body: msg.Data()}}
		if n := msg.Headers().Get(HeaderBatch); n != "" {
			if items, err = decodeBatch(msg.Data(), n); err != nil {
				st.Callbacks++
				st.Unparseable++
				items = nil
			}
		}
		for _, it := range items {
			at := received
			if t, err := time.Parse(time.RFC3339Nano, it.ReceivedAt); err == nil {
				at = t
			}
			st.Callbacks++
			if err := f.replayOne(ctx, it.Body, at, seen, opts.DryRun, &st); err != nil {
				return st, err
			}
		}
		if meta.Sequence.Stream >= last {
			return st, nil
		}
	}
}

// maxReplaySubjects bounds what a replay remembers of the status stream: the
// eventIds of this many subjects (devices), whatever the callback stream holds.
const maxReplaySubjects = 100_000

func (f *fanout) replayOne(ctx context.Context, body []byte, received time.Time, seen map[string]map[string]bool, dry bool, st *ReplayStats) error {
	cb, err := parseCallback(body)
	if err != nil {
		st.Unparseable++
		return nil
	}
	pc := parse(cb, received)
	if !pc.known {
		st.Unparseable++
		return nil
	}
	rec, err := f.records.Get(ctx, cb.RequestID, true)
	if errors.Is(err, correlation.ErrNotFound) {
		rec, err = nil, nil
	}
	if err != nil {
		return err
	}
	ev := buildEvent(pc, rec)
	subject := ev.Subject()
	ids, ok := seen[subject]
	if !ok {
		if len(seen) >= maxReplaySubjects {
			clear(seen) // a subject met again is read again: slower, never wrong
		}
		if ids, err = f.eventIDs(ctx, subject); err != nil {
			return err
		}
		seen[subject] = ids
	}
	if ids[ev.EventID] {
		st.Existing++
		return nil
	}
	if !dry {
		if err := f.publish(ctx, ev); err != nil {
			return err
		}
	}
	ids[ev.EventID] = true
	st.Published++
	return nil
}

// eventIDs reads every eventId stored on subject.
func (f *fanout) eventIDs(ctx context.Context, subject string) (map[string]bool, error) {
	ids := map[string]bool{}
	if _, err := f.status.GetLastMsgForSubject(ctx, subject); errors.Is(err, jetstream.ErrMsgNotFound) {
		return ids, nil
	}
	cons, err := f.status.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{FilterSubjects: []string{subject}})
	if err != nil {
		return nil, err
	}
	for {
		msg, err := cons.Next(jetstream.FetchMaxWait(time.Second))
		if err != nil {
			return nil, err
		}
		var ev status.Event
		if json.Unmarshal(msg.Data(), &ev) == nil {
			ids[ev.EventID] = true
		}
		meta, err := msg.Metadata()
		if err != nil || meta.NumPending == 0 {
			return ids, nil
		}
	}
}
