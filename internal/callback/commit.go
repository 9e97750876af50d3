package callback

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/esim-pipeline/thingspace-esim/internal/broker"
)

// Headers of a raw message in the callback stream beyond those of one
// callback.
const (
	// HeaderBatch marks a raw message that carries several callbacks
	// stored together (group commit); its value is how many.
	HeaderBatch = "Callback-Batch"
	// HeaderBatchID names one stored message of one ingest instance; the
	// fan-out of the same instance finds the parsed callbacks under it.
	HeaderBatchID = "Callback-Batch-Id"
)

// committer stores callbacks in the callback stream with group commit:
// callbacks that arrive while a store is under way wait, and the next store
// takes all of them (up to maxBatch callbacks or maxBytes) as one message.
// Under light load each callback is stored alone, as it came; under heavy
// load one store (one fsync with sync_interval: always) acknowledges many
// callbacks, so the intake answers more of them than the disk does writes.
//
// Up to workers stores may be under way at once, but a store begins beside
// others only once minBatch callbacks wait for it or the first of them
// waited maxWait: parallel stores help when one store's latency, not its
// size, holds the intake back (a slow store would stall every callback
// behind it), and starting them early would only cut the batches small
// (each stored message is one more store, delivery, ack and fan-out run).
//
// What the intake parsed goes into the hand-off under the message's batch
// id before the store, so that the fan-out of this instance turns the
// stored message into events without parsing it again.
type committer struct {
	js       func() jetstream.JetStream
	in       chan *pending
	maxBatch int
	minBatch int           // callbacks waiting before a store begins beside another
	maxWait  time.Duration // or how long the first of them waited
	maxBytes int
	timeout  time.Duration
	m        *metrics
	handoff  *handoff
	idPrefix string
	seq      atomic.Uint64
	pool     sync.Pool // of *pending

	collecting sync.Mutex    // one worker gathers the next batch at a time
	inflight   atomic.Int32  // stores under way
	idle       chan struct{} // a store ended with none other under way
}

// pending is one callback on its way to the stream: its bytes as received
// (valid until the intake's handler returns, which is after the store),
// the message id of its fact and what the intake parsed (requestId and
// arrival time included).
type pending struct {
	body   []byte
	msgID  string
	parsed *parsedCallback
	done   chan error
}

func newCommitter(js func() jetstream.JetStream, workers, maxBatch int, timeout time.Duration, m *metrics, h *handoff) *committer {
	return &committer{
		js: js, in: make(chan *pending, workers*maxBatch), maxBatch: maxBatch, minBatch: max(maxBatch/2, 1), maxWait: 2 * time.Millisecond,
		maxBytes: 768 << 10, timeout: timeout, m: m, handoff: h, idPrefix: newInstanceID() + "-",
		idle: make(chan struct{}, 1),
	}
}

// newInstanceID is a short random name of this process's batches.
func newInstanceID() string {
	return nats.NewInbox()[len(nats.InboxPrefix):]
}

// run serves stores with workers goroutines until ctx ends.
func (c *committer) run(ctx context.Context, workers int) {
	for range workers {
		go c.worker(ctx)
	}
}

// get returns an empty pending to fill and pass to store.
func (c *committer) get() *pending {
	if p, ok := c.pool.Get().(*pending); ok {
		return p
	}
	return &pending{done: make(chan error, 1)}
}

// store keeps p (one raw callback) and returns once JetStream acknowledged
// it, or why not. The worker's publish has its own time limit; ctx only
// ends the wait (the client went away).
func (c *committer) store(ctx context.Context, p *pending) error {
	select {
	case c.in <- p:
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-p.done:
		*p = pending{done: p.done}
		c.pool.Put(p) // nobody else holds it any more
		return err
	case <-ctx.Done():
		return ctx.Err() // the worker still answers on p.done; p is left to the GC
	}
}

func (c *committer) worker(ctx context.Context) {
	batch := make([]*pending, 0, c.maxBatch)
	var frame []byte
	for {
		var ok bool
		if batch, ok = c.collect(ctx, batch[:0]); !ok {
			return
		}
		var err error
		frame, err = c.publish(ctx, batch, frame)
		if c.inflight.Add(-1) == 0 {
			select {
			case c.idle <- struct{}{}:
			default:
			}
		}
		for _, p := range batch {
			p.done <- err
		}
	}
}

// collect gathers the next batch into batch and counts its store as under
// way; false once ctx ended with nothing gathered. It returns when the
// batch is full, or no other store is under way, or minBatch callbacks
// are in it, or its first waited maxWait; until then it keeps taking
// callbacks as they come.
func (c *committer) collect(ctx context.Context, batch []*pending) ([]*pending, bool) {
	c.collecting.Lock()
	defer c.collecting.Unlock()
	select {
	case <-ctx.Done():
		return batch, false
	case p := <-c.in:
		batch = append(batch, p)
	}
	size := len(batch[0].body)
	take := func(p *pending) { batch = append(batch, p); size += len(p.body) }
	full := func() bool { return len(batch) >= c.maxBatch || size >= c.maxBytes }
	var late <-chan time.Time
gather:
	for !full() {
		select {
		case p := <-c.in:
			take(p)
			continue
		default:
		}
		if c.inflight.Load() == 0 || len(batch) >= c.minBatch {
			break gather
		}
		if late == nil {
			wait := c.maxWait - time.Since(batch[0].parsed.receivedAt)
			if wait <= 0 {
				break gather
			}
			t := time.NewTimer(wait)
			defer t.Stop()
			late = t.C
		}
		select {
		case p := <-c.in:
			take(p)
		case <-c.idle: // look again: another store may have begun since
		case <-late:
			break gather
		case <-ctx.Done():
			break gather // store what was taken: its callers wait
		}
	}
	c.inflight.Add(1)
	return batch, true
}

// publish stores batch as one message. frame is the worker's buffer for
// the group-committed body, returned for reuse: nats.go has copied it when
// PublishMsg returns.
func (c *committer) publish(ctx context.Context, batch []*pending, frame []byte) ([]byte, error) {
	js := c.js()
	if js == nil {
		return frame, errors.New("not connected to NATS")
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.timeout)
	defer cancel()
	id := c.idPrefix + strconv.FormatUint(c.seq.Add(1), 36)
	parsed := make([]*parsedCallback, len(batch))
	for i, p := range batch {
		parsed[i] = p.parsed
	}
	c.handoff.put(id, parsed)
	var msg *nats.Msg
	if len(batch) == 1 {
		p := batch[0]
		msg = &nats.Msg{Subject: broker.CallbackSubject, Data: p.body, Header: nats.Header{
			HeaderReceivedAt:    []string{formatReceived(p.parsed.receivedAt)},
			HeaderCorrelationID: []string{p.parsed.cb.RequestID},
			// One fact (requestId, device, status) is stored once:
			// ThingSpace's resends differ only in callbackCount.
			nats.MsgIdHdr: []string{p.msgID},
			HeaderBatchID: []string{id},
		}}
	} else {
		c.m.groupCommit.Observe(float64(len(batch)))
		frame = appendBatch(frame[:0], batch)
		msg = &nats.Msg{Subject: broker.CallbackSubject, Data: frame, Header: nats.Header{
			HeaderBatch:      []string{strconv.Itoa(len(batch))},
			HeaderReceivedAt: []string{formatReceived(batch[0].parsed.receivedAt)},
			HeaderBatchID:    []string{id},
		}}
	}
	ack, err := js.PublishMsg(ctx, msg)
	if err != nil || ack.Duplicate {
		c.handoff.take(id) // nothing will be delivered under this id
	}
	if cap(frame) > 4<<20 {
		frame = nil // do not keep a rare giant
	}
	return frame, err
}

// formatReceived is the Callback-Received-At value of t.
func formatReceived(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) }

// rawCallback is one callback as stored: its bytes and the headers the
// intake gave it.
type rawCallback struct {
	Body       []byte
	ReceivedAt string
	MsgID      string
}

// appendBatch frames callbacks: for each, the received-at time, the
// message id and the body, each as a uvarint length and its bytes.
func appendBatch(out []byte, batch []*pending) []byte {
	var ts [64]byte
	for _, p := range batch {
		out = appendPart(out, p.parsed.receivedAt.UTC().AppendFormat(ts[:0], time.RFC3339Nano))
		out = appendPart(out, p.msgID)
		out = appendPart(out, p.body)
	}
	return out
}

func appendPart[T string | []byte](out []byte, part T) []byte {
	out = binary.AppendUvarint(out, uint64(len(part)))
	return append(out, part...)
}

// maxBatchCallbacks is the most callbacks a stored message may carry: the
// top of GROUP_COMMIT_MAX's range.
const maxBatchCallbacks = 1024

// decodeBatch reads what appendBatch wrote; the bodies are slices of data.
// header is the Callback-Batch value: how many callbacks data carries. It
// is checked before anything is allocated by it, against the most a batch
// may hold and the least room each callback takes (three length bytes).
func decodeBatch(data []byte, header string) ([]rawCallback, error) {
	want, err := strconv.Atoi(header)
	switch {
	case err != nil:
		return nil, fmt.Errorf("callback batch header %s %s is not a count", HeaderBatch, describe(header))
	case want < 1 || want > maxBatchCallbacks:
		return nil, fmt.Errorf("callback batch header %s %d is out of range 1..%d", HeaderBatch, want, maxBatchCallbacks)
	case want > len(data)/3:
		return nil, fmt.Errorf("callback batch header %s %d is more than %d bytes can hold", HeaderBatch, want, len(data))
	}
	out := make([]rawCallback, 0, want)
	for len(data) > 0 {
		var parts [3][]byte
		for i := range parts {
			n, k := binary.Uvarint(data)
			if k <= 0 || uint64(len(data)-k) < n {
				return nil, fmt.Errorf("callback batch is cut short after %d callbacks", len(out))
			}
			parts[i] = data[k : k+int(n)]
			data = data[k+int(n):]
		}
		out = append(out, rawCallback{ReceivedAt: string(parts[0]), MsgID: string(parts[1]), Body: parts[2]})
	}
	if len(out) != want {
		return nil, fmt.Errorf("callback batch holds %d callbacks, its header says %d", len(out), want)
	}
	return out, nil
}

// handoff holds what the intake parsed of each stored message until the
// fan-out of this instance takes it. A message the consumer hands to
// another instance (or after a restart) is simply parsed there again; so
// entries are also dropped oldest first past maxItems callbacks or maxAge.
type handoff struct {
	maxItems int
	maxAge   time.Duration
	now      func() time.Time

	mu    sync.Mutex
	m     map[string][]*parsedCallback
	queue []handoffKey // in put order; ids already taken are skipped
	items int
}

type handoffKey struct {
	id string
	at time.Time
}

func newHandoff(maxItems int, maxAge time.Duration) *handoff {
	return &handoff{maxItems: maxItems, maxAge: maxAge, now: time.Now, m: make(map[string][]*parsedCallback)}
}

func (h *handoff) put(id string, items []*parsedCallback) {
	if h == nil || h.maxItems <= 0 {
		return
	}
	now := h.now()
	h.mu.Lock()
	defer h.mu.Unlock()
	h.m[id] = items
	h.items += len(items)
	h.queue = append(h.queue, handoffKey{id: id, at: now})
	for len(h.queue) > 0 {
		k := h.queue[0]
		v, live := h.m[k.id]
		if live && h.items <= h.maxItems && now.Sub(k.at) < h.maxAge {
			break
		}
		if live {
			delete(h.m, k.id)
			h.items -= len(v)
		}
		h.queue[0] = handoffKey{}
		h.queue = h.queue[1:]
	}
}

// get returns the parsed callbacks stored under id, or nil.
func (h *handoff) get(id string) []*parsedCallback {
	if h == nil || id == "" {
		return nil
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.m[id]
}

// take removes id's entry and returns it.
func (h *handoff) take(id string) []*parsedCallback {
	if h == nil || id == "" {
		return nil
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	v, ok := h.m[id]
	if ok {
		delete(h.m, id)
		h.items -= len(v)
	}
	return v
}
