// Package statuspub stores status events on the status stream: the one
// publisher the dispatcher and the ingest's fan-out share.
//
// Each event is a message on its status subject with its eventId as
// Nats-Msg-Id. With a batch maximum set (STATUS_BATCH_MAX), what waits to
// be stored, from every caller at once, goes to the server in atomic
// batches of up to that many: one commit, and under sync_interval: always
// one fsync, for the batch instead of one per event (BENCHMARKS.md, lesson
// 15). A batch forms while the one before it is being stored, so at low
// load an event goes out at once, alone, and at high load the batches
// fill. A batch the server refuses stores nothing (a duplicate eventId
// inside fails it whole, as after a redelivery): its events then go one by
// one, where a duplicate is acknowledged as one.
package statuspub

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/synadia-io/orbit.go/jetstreamext"
)

// MinBatch is the fewest events worth an atomic batch: each batch costs the
// server a few fsyncs and milliseconds of its own (lesson 15), which fewer
// events do not pay back.
const MinBatch = 100

// MaxBatch is nats-server's default limit of messages in one atomic batch.
const MaxBatch = 1000

// Ack is what became of one event.
type Ack struct {
	// Duplicate: the stream had the eventId already (the fact was stored
	// before).
	Duplicate bool
	// Err is why it is not stored; the caller may try again (the eventId
	// keeps a second store from storing it twice).
	Err error
}

// Config configures a Publisher.
type Config struct {
	// BatchMax is the most events in one atomic batch, MinBatch to the
	// server's limit; 0 stores each event alone.
	BatchMax int
	// Timeout bounds one publish: its wait for a free slot among the async
	// publishes in flight, and for its ack (default 10 s).
	Timeout time.Duration
	// Batches, when set, is told the result of each atomic batch:
	// "committed", or "refused_<error code>" / "refused".
	Batches func(result string)
}

// Publisher stores status events. Safe for concurrent use; Close stops it.
type Publisher struct {
	js  jetstream.JetStream
	cfg Config

	in     chan *request
	stop   context.CancelFunc
	done   chan struct{}
	closed sync.Once
}

type request struct {
	msgs []*nats.Msg
	acks []Ack
	done chan struct{}
}

// New returns a running Publisher.
func New(js jetstream.JetStream, cfg Config) *Publisher {
	if cfg.Timeout <= 0 {
		cfg.Timeout = 10 * time.Second
	}
	ctx, stop := context.WithCancel(context.Background())
	p := &Publisher{js: js, cfg: cfg, in: make(chan *request, 1024), stop: stop, done: make(chan struct{})}
	if cfg.BatchMax > 0 {
		go p.loop(ctx)
	} else {
		close(p.done)
	}
	return p
}

// Close stops the batching loop once what it took is stored; a Store
// waiting for it then fails with ErrClosed.
func (p *Publisher) Close() {
	p.closed.Do(func() {
		p.stop()
		<-p.done
	})
}

// ErrClosed reports a Store on a closed Publisher.
var ErrClosed = errors.New("statuspub: closed")

// Message is the message that stores an event: body on subject, eventID
// as Nats-Msg-Id.
func Message(subject, eventID string, body []byte) *nats.Msg {
	return &nats.Msg{Subject: subject, Data: body, Header: nats.Header{nats.MsgIdHdr: []string{eventID}}}
}

// Store stores msgs and returns, in their order, what became of each. It
// returns when every one is acknowledged or failed, or ctx ends (then the
// ones not known stored carry ctx's error; they may be stored still).
func (p *Publisher) Store(ctx context.Context, msgs []*nats.Msg) []Ack {
	if len(msgs) == 0 {
		return nil
	}
	if p.cfg.BatchMax <= 0 {
		acks := make([]Ack, len(msgs))
		p.alone(ctx, msgs, acks)
		return acks
	}
	r := &request{msgs: msgs, acks: make([]Ack, len(msgs)), done: make(chan struct{})}
	fail := func(err error) []Ack {
		out := make([]Ack, len(msgs))
		for i := range out {
			out[i].Err = err
		}
		return out
	}
	select {
	case p.in <- r:
	case <-ctx.Done():
		return fail(ctx.Err())
	case <-p.done:
		return fail(ErrClosed)
	}
	select {
	case <-r.done:
		return r.acks
	case <-ctx.Done():
		return fail(ctx.Err())
	case <-p.done:
		select {
		case <-r.done: // stored in the last round
			return r.acks
		default:
			return fail(ErrClosed)
		}
	}
}

// loop gathers what waits, stores it, and starts over.
func (p *Publisher) loop(ctx context.Context) {
	defer close(p.done)
	for {
		var reqs []*request
		n := 0
		select {
		case r := <-p.in:
			reqs, n = append(reqs, r), len(r.msgs)
		case <-ctx.Done():
			return
		}
	gather:
		for n < p.cfg.BatchMax {
			select {
			case r := <-p.in:
				reqs, n = append(reqs, r), n+len(r.msgs)
			default:
				break gather
			}
		}
		p.commit(reqs, n)
	}
}

// slotRef is where one message of a gathered round came from.
type slotRef struct {
	r *request
	i int
}

// commit stores one round: atomic batches of up to BatchMax when the round
// is big enough, the rest (and what a refused batch held) one by one.
func (p *Publisher) commit(reqs []*request, n int) {
	defer func() {
		for _, r := range reqs {
			close(r.done)
		}
	}()
	msgs := make([]*nats.Msg, 0, n)
	refs := make([]slotRef, 0, n)
	for _, r := range reqs {
		for i, m := range r.msgs {
			msgs = append(msgs, m)
			refs = append(refs, slotRef{r, i})
		}
	}
	ctx := context.Background()
	var alone []*nats.Msg
	var aloneRefs []slotRef
	for start := 0; start < len(msgs); start += p.cfg.BatchMax {
		end := min(start+p.cfg.BatchMax, len(msgs))
		chunk := msgs[start:end]
		if len(chunk) >= MinBatch && p.atomic(ctx, chunk) {
			continue // every ack is the zero Ack: stored
		}
		alone = append(alone, chunk...)
		aloneRefs = append(aloneRefs, refs[start:end]...)
	}
	if len(alone) == 0 {
		return
	}
	acks := make([]Ack, len(alone))
	p.alone(ctx, alone, acks)
	for k, a := range acks {
		aloneRefs[k].r.acks[aloneRefs[k].i] = a
	}
}

// atomic stores msgs as one atomic batch and reports whether it was
// committed; when not, nothing of it is stored and its messages are as
// they were.
func (p *Publisher) atomic(ctx context.Context, msgs []*nats.Msg) bool {
	ctx, cancel := context.WithTimeout(ctx, p.cfg.Timeout)
	defer cancel()
	_, err := jetstreamext.PublishMsgBatch(ctx, p.js, msgs)
	if err == nil {
		p.observe("committed")
		return true
	}
	for _, m := range msgs {
		// A message with a batch id is taken for part of a batch, and the
		// batch's requests left their reply inbox on some.
		m.Reply = ""
		m.Header.Del(jetstreamext.BatchIDHeader)
		m.Header.Del(jetstreamext.BatchSeqHeader)
		m.Header.Del(jetstreamext.BatchCommitHeader)
	}
	result := "refused"
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		result = "refused_" + strconv.Itoa(int(apiErr.ErrorCode))
	}
	p.observe(result)
	return false
}

func (p *Publisher) observe(result string) {
	if p.cfg.Batches != nil {
		p.cfg.Batches(result)
	}
}

// alone stores each message by an async publish and waits for every ack.
func (p *Publisher) alone(ctx context.Context, msgs []*nats.Msg, acks []Ack) {
	futures := make([]jetstream.PubAckFuture, len(msgs))
	for i, m := range msgs {
		// At nats.go's cap of publishes in flight, wait for a slot as long
		// as an ack may take rather than fail after its 200 ms.
		f, err := p.js.PublishMsgAsync(m, jetstream.WithStallWait(p.cfg.Timeout))
		if err != nil {
			acks[i].Err = err
			continue
		}
		futures[i] = f
	}
	timeout := time.NewTimer(p.cfg.Timeout)
	defer timeout.Stop()
	for i, f := range futures {
		if f == nil {
			continue
		}
		select {
		case a := <-f.Ok():
			acks[i].Duplicate = a.Duplicate
		case err := <-f.Err():
			acks[i].Err = err
		case <-ctx.Done():
			acks[i].Err = ctx.Err()
		case <-timeout.C:
			for j := i; j < len(futures); j++ {
				if futures[j] != nil {
					acks[j].Err = context.DeadlineExceeded
				}
			}
			return
		}
	}
}
