package callback

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// HeaderBatch marks a raw message that carries several callbacks stored
// together (group commit); its value is how many.
const HeaderBatch = "Callback-Batch"

// committer stores callbacks in the callback stream with group commit: a
// worker takes one callback, adds every other one already waiting (up to
// maxBatch callbacks or maxBytes), and stores them as one message. Under
// light load each callback is stored alone, as it came; under heavy load
// one fsync (sync_interval: always) acknowledges many callbacks, so the
// intake answers more of them than the disk does writes.
type committer struct {
	js       func() jetstream.JetStream
	in       chan *storeReq
	maxBatch int
	maxBytes int
	timeout  time.Duration
	m        *metrics
}

type storeReq struct {
	msg  *nats.Msg
	done chan error
}

func newCommitter(js func() jetstream.JetStream, workers, maxBatch int, timeout time.Duration, m *metrics) *committer {
	return &committer{js: js, in: make(chan *storeReq, workers*maxBatch), maxBatch: maxBatch, maxBytes: 768 << 10, timeout: timeout, m: m}
}

// run serves stores with workers goroutines until ctx ends.
func (c *committer) run(ctx context.Context, workers int) {
	for range workers {
		go c.worker(ctx)
	}
}

// store keeps msg (one raw callback) and returns once JetStream acknowledged
// it, or why not.
func (c *committer) store(ctx context.Context, msg *nats.Msg) error {
	r := &storeReq{msg: msg, done: make(chan error, 1)}
	select {
	case c.in <- r:
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-r.done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (c *committer) worker(ctx context.Context) {
	batch := make([]*storeReq, 0, c.maxBatch)
	for {
		batch = batch[:0]
		select {
		case <-ctx.Done():
			return
		case r := <-c.in:
			batch = append(batch, r)
		}
		size := len(batch[0].msg.Data)
	fill:
		for len(batch) < c.maxBatch && size < c.maxBytes {
			select {
			case r := <-c.in:
				batch = append(batch, r)
				size += len(r.msg.Data)
			default:
				break fill
			}
		}
		err := c.publish(ctx, batch)
		for _, r := range batch {
			r.done <- err
		}
	}
}

func (c *committer) publish(ctx context.Context, batch []*storeReq) error {
	js := c.js()
	if js == nil {
		return errors.New("not connected to NATS")
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.timeout)
	defer cancel()
	if len(batch) == 1 {
		_, err := js.PublishMsg(ctx, batch[0].msg)
		return err
	}
	c.m.groupCommit.Observe(float64(len(batch)))
	msgs := make([]*nats.Msg, len(batch))
	for i, r := range batch {
		msgs[i] = r.msg
	}
	env := &nats.Msg{Subject: batch[0].msg.Subject, Data: encodeBatch(msgs), Header: nats.Header{}}
	env.Header.Set(HeaderBatch, strconv.Itoa(len(batch)))
	env.Header.Set(HeaderReceivedAt, batch[0].msg.Header.Get(HeaderReceivedAt))
	_, err := js.PublishMsg(ctx, env)
	return err
}

// rawCallback is one callback as stored: its bytes and the headers the
// intake gave it.
type rawCallback struct {
	Body       []byte
	ReceivedAt string
	MsgID      string
}

// encodeBatch frames callbacks: for each, the received-at header, the
// message id and the body, each as a uvarint length and its bytes.
func encodeBatch(msgs []*nats.Msg) []byte {
	n := 0
	for _, m := range msgs {
		n += len(m.Data) + 64
	}
	out := make([]byte, 0, n)
	for _, m := range msgs {
		for _, part := range [][]byte{[]byte(m.Header.Get(HeaderReceivedAt)), []byte(m.Header.Get(nats.MsgIdHdr)), m.Data} {
			out = binary.AppendUvarint(out, uint64(len(part)))
			out = append(out, part...)
		}
	}
	return out
}

// decodeBatch reads what encodeBatch wrote.
func decodeBatch(data []byte, want int) ([]rawCallback, error) {
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
	if want > 0 && len(out) != want {
		return nil, fmt.Errorf("callback batch holds %d callbacks, its header says %d", len(out), want)
	}
	return out, nil
}
