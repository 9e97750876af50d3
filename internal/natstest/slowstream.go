package natstest

import (
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
)

// SlowStream stands in for a JetStream stream named stream on subjects that
// acknowledges every publish delay after it came (as a stream does under
// sync_interval: always with a deep queue), and records what came. It lets a
// test hold a publisher at its cap of async publishes in flight for longer
// than nats.go's default stall wait.
type SlowStream struct {
	mu   sync.Mutex
	msgs []*nats.Msg
}

// RunSlowStream subscribes the stand-in on its own connection.
func (s *Server) RunSlowStream(stream, subjects string, delay time.Duration) *SlowStream {
	s.t.Helper()
	ss := &SlowStream{}
	nc := s.Connect()
	if _, err := nc.Subscribe(subjects, func(m *nats.Msg) {
		ss.mu.Lock()
		ss.msgs = append(ss.msgs, m)
		n := len(ss.msgs)
		ss.mu.Unlock()
		ack := fmt.Appendf(nil, `{"stream":%q,"seq":%d}`, stream, n)
		time.AfterFunc(delay, func() { _ = m.Respond(ack) })
	}); err != nil {
		s.t.Fatalf("natstest: slow stream: %v", err)
	}
	if err := nc.Flush(); err != nil {
		s.t.Fatalf("natstest: slow stream: %v", err)
	}
	return ss
}

// Seen lists what f reads of every message that came, in arrival order.
func (ss *SlowStream) Seen(f func(*nats.Msg) string) []string {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	out := make([]string, len(ss.msgs))
	for i, m := range ss.msgs {
		out[i] = f(m)
	}
	return out
}
