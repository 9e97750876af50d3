package callback

import (
	"container/list"
	"context"
	"errors"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/esim-pipeline/thingspace-esim/internal/broker"
	"github.com/esim-pipeline/thingspace-esim/internal/status"
)

// The EID index (see broker.LookupDevice) is kept here, from the status
// stream itself: the durable consumer eid-index reads every status event,
// whoever published it (the dispatcher's accepted, rejected, failed and
// timed_out events, this service's callback events), and for each that
// names an EID under another subject id writes the key <eid>.<id> in the
// bucket thingspace_eids. The keys are facts that never change, so writes
// are idempotent and their order does not matter: any number of ingests
// share the consumer, a redelivery writes a key again, and a key already
// written is skipped (remembered for broker.EIDIndexRefresh). A new
// consumer starts at the stream's first event, so an existing deployment's
// history is indexed on the first start; a lost bucket is rebuilt by
// `callback-ingest replay`.

// indexConsumerConfig is the index's durable consumer.
func indexConsumerConfig(cfg Config) jetstream.ConsumerConfig {
	return jetstream.ConsumerConfig{
		Durable:       broker.EIDIndexConsumer,
		Description:   "callback-ingest: the EID index (bucket " + broker.EIDBucket + ") from the status events",
		FilterSubject: status.SubjectWildcard,
		DeliverPolicy: jetstream.DeliverAllPolicy,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       30 * time.Second,
		MaxDeliver:    -1,
		MaxAckPending: 20000,
		Replicas:      cfg.StreamReplicas,
	}
}

// indexKeyOf returns the index key of a status event, or false when it
// needs none: a subject thingspace.profile.status.<action>.<id> whose event
// names an EID other than id.
func indexKeyOf(subject string, data []byte) (key, id string, ok bool) {
	rest, found := strings.CutPrefix(subject, status.SubjectPrefix+".")
	if !found {
		return "", "", false
	}
	_, id, found = strings.Cut(rest, ".")
	if !found || strings.Contains(id, ".") {
		return "", "", false
	}
	eid := broker.EventEID(data)
	if eid == "" {
		return "", "", false
	}
	key, ok = broker.EIDIndexKey(eid, id)
	return key, id, ok
}

// written remembers the index keys written lately, up to size in LRU
// order, each for the refresh span after its write.
type written struct {
	mu      sync.Mutex
	size    int
	refresh time.Duration
	order   *list.List // of *writtenKey, front = most recent
	byKey   map[string]*list.Element
}

type writtenKey struct {
	key string
	at  time.Time
}

func newWritten(size int, refresh time.Duration) *written {
	return &written{size: size, refresh: refresh, order: list.New(), byKey: make(map[string]*list.Element, size)}
}

// claim reports whether key must be written at now, and if so remembers it
// as written (a failed write calls forget).
func (w *written) claim(key string, now time.Time) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if e, ok := w.byKey[key]; ok {
		k := e.Value.(*writtenKey)
		if now.Sub(k.at) < w.refresh {
			w.order.MoveToFront(e)
			return false
		}
		k.at = now
		w.order.MoveToFront(e)
		return true
	}
	w.byKey[key] = w.order.PushFront(&writtenKey{key: key, at: now})
	for w.order.Len() > w.size {
		old := w.order.Back()
		w.order.Remove(old)
		delete(w.byKey, old.Value.(*writtenKey).key)
	}
	return true
}

func (w *written) forget(key string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if e, ok := w.byKey[key]; ok {
		w.order.Remove(e)
		delete(w.byKey, key)
	}
}

// indexWrittenSize is how many keys an ingest remembers as written: the
// profiles of a fleet's active devices, about 100 bytes each.
const indexWrittenSize = 200_000

// indexer follows the status stream and writes the EID index.
type indexer struct {
	js      jetstream.JetStream
	cons    jetstream.Consumer
	written *written
	timeout time.Duration
	now     func() time.Time
	m       *metrics
	log     zerolog.Logger
}

// indexWrite is a key write under way and the event that asked for it,
// acknowledged once the write is stored.
type indexWrite struct {
	msg jetstream.Msg
	fut jetstream.PubAckFuture
	key string
}

// run indexes until ctx ends. Events that need no write are acknowledged
// at once; the others once their key is stored, so an ingest that dies
// leaves them for another (or its next start) to index.
func (x *indexer) run(ctx context.Context) error {
	writes := make(chan indexWrite, 4096)
	awaited := make(chan struct{})
	go func() {
		defer close(awaited)
		for w := range writes {
			x.await(w)
		}
	}()
	cc, err := x.cons.Consume(func(msg jetstream.Msg) {
		key, id, ok := indexKeyOf(msg.Subject(), msg.Data())
		if !ok || !x.written.claim(key, x.now()) {
			_ = msg.Ack()
			return
		}
		fut, err := x.js.PublishAsync(broker.EIDIndexSubject(key), broker.EIDIndexValue(id), jetstream.WithStallWait(x.timeout))
		if err != nil {
			x.written.forget(key)
			x.m.indexErrors.Inc()
			_ = msg.NakWithDelay(indexRetryDelay(msg))
			return
		}
		writes <- indexWrite{msg: msg, fut: fut, key: key}
	}, jetstream.PullMaxMessages(1000), jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) {
		if !errors.Is(err, jetstream.ErrNoHeartbeat) && !errors.Is(err, nats.ErrConnectionClosed) {
			x.log.Warn().Err(err).Msg("EID index consumer")
		}
	}))
	if err != nil {
		close(writes)
		<-awaited
		return err
	}
	<-ctx.Done()
	cc.Stop()
	select {
	case <-cc.Closed(): // no handler runs after this: writes has no more senders
	case <-time.After(x.timeout):
		return errors.New("EID index consumer did not stop; its unacknowledged events come back")
	}
	close(writes)
	<-awaited
	return nil
}

func (x *indexer) await(w indexWrite) {
	t := time.NewTimer(x.timeout)
	defer t.Stop()
	select {
	case <-w.fut.Ok():
		x.m.indexWrites.Inc()
		_ = w.msg.Ack()
		return
	case err := <-w.fut.Err():
		x.log.Debug().Err(err).Str("key", w.key).Msg("EID index write failed; the event comes back")
	case <-t.C:
	}
	x.written.forget(w.key)
	x.m.indexErrors.Inc()
	_ = w.msg.NakWithDelay(indexRetryDelay(w.msg))
}

// indexRetryDelay is when an event whose key could not be written comes
// back: a second per delivery so far, at most 30. Up to the consumer's
// 20,000 unacknowledged events may be waiting on a bucket that is gone.
func indexRetryDelay(msg jetstream.Msg) time.Duration {
	n := uint64(1)
	if meta, err := msg.Metadata(); err == nil {
		n = meta.NumDelivered
	}
	return time.Duration(min(max(n, 1), 30)) * time.Second
}

// IndexStats say what a rebuild of the EID index did.
type IndexStats struct {
	Events  int // status events read
	Written int // index keys written (or, dry, that would be)
}

// rebuildIndex writes the index keys of every status event stored at or
// after since (all when zero) up to the stream's last event at the start:
// what `callback-ingest replay` does for a lost or new bucket. dry counts
// the keys and writes none.
func rebuildIndex(ctx context.Context, js jetstream.JetStream, since time.Time, dry bool) (IndexStats, error) {
	var st IndexStats
	statusStream, err := js.Stream(ctx, broker.StatusStream)
	if err != nil {
		return st, err
	}
	info, err := statusStream.Info(ctx)
	if err != nil {
		return st, err
	}
	last := info.State.LastSeq
	if info.State.Msgs == 0 {
		return st, nil
	}
	cfg := jetstream.OrderedConsumerConfig{FilterSubjects: []string{status.SubjectWildcard}}
	if !since.IsZero() {
		cfg.DeliverPolicy, cfg.OptStartTime = jetstream.DeliverByStartTimePolicy, &since
	}
	cons, err := statusStream.OrderedConsumer(ctx, cfg)
	if err != nil {
		return st, err
	}
	seen := map[string]bool{}
	var futures []jetstream.PubAckFuture
	flush := func() error {
		for _, f := range futures {
			select {
			case <-f.Ok():
			case err := <-f.Err():
				return err
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		futures = futures[:0]
		return nil
	}
	for {
		batch, err := cons.Fetch(1000, jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			return st, err
		}
		n := 0
		done := false
		for msg := range batch.Messages() {
			n++
			st.Events++
			if key, id, ok := indexKeyOf(msg.Subject(), msg.Data()); ok && !seen[key] {
				if len(seen) >= maxReplaySubjects*10 {
					clear(seen) // a key met again is written again: idempotent
				}
				seen[key] = true
				st.Written++
				if !dry {
					f, err := js.PublishAsync(broker.EIDIndexSubject(key), broker.EIDIndexValue(id))
					if err != nil {
						return st, err
					}
					futures = append(futures, f)
				}
			}
			if meta, err := msg.Metadata(); err == nil && (meta.Sequence.Stream >= last || meta.NumPending == 0) {
				done = true
			}
		}
		if err := flush(); err != nil {
			return st, err
		}
		if err := batch.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) {
			return st, err
		}
		if done || n == 0 {
			return st, nil
		}
	}
}
