package dispatch

import (
	"encoding/json"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/esim-pipeline/thingspace-esim/internal/broker"
)

// puller asks for commands with pull requests of its own rather than
// nats.go's Fetch, and takes what comes on one subscription that outlives
// the requests. Fetch ends a pull when it has counted max_bytes itself and
// unsubscribes: on a pinned consumer it counts the Nats-Pin-Id header that
// the server adds after counting, on a cluster the 409 that ends a pull can
// overtake the messages before it, and a request the server filled to
// exactly max_bytes ends without a word; what the server sent after Fetch
// stopped listening was lost until its ack wait, and a command lost so can
// come back behind a later one of its device. Here nothing the server sends
// is lost: a request is only how much to ask for; every message, whichever
// request brought it, is taken in the order it came.
type puller struct {
	nc      *nats.Conn
	subject string // the consumer's next-message API subject
	prefix  string // replies go to prefix + n
	sub     *nats.Subscription
	msgs    chan *nats.Msg // room for every open request's batch and status
	pin     string         // the pin id this client holds, "" when none
	n       uint64
	open    []*pullRequest // requests the server may still be serving, oldest first
}

// pullRequest is one request and what came of it so far.
type pullRequest struct {
	reply    string
	batch    int
	maxBytes int
	got      int
	bytes    int       // of what it brought, as the server counts
	until    time.Time // by then the server has ended it
}

// maxOpen bounds the requests asked and not known to be over.
const maxOpen = 2

func newPuller(nc *nats.Conn, js jetstream.JetStream) (*puller, error) {
	api := js.Options().APIPrefix
	if api == "" {
		api = "$JS.API."
	}
	if !strings.HasSuffix(api, ".") {
		api += "."
	}
	p := &puller{
		nc:      nc,
		subject: api + "CONSUMER.MSG.NEXT." + broker.CommandStream + "." + broker.DispatcherConsumer,
		prefix:  nc.NewInbox() + ".",
		// Room for what every open request may bring, and their ends, twice
		// over (a request thought over a little early): a full channel
		// would drop messages.
		msgs: make(chan *nats.Msg, 2*maxOpen*(maxPull+8)),
	}
	sub, err := nc.ChanSubscribe(p.prefix+"*", p.msgs)
	if err != nil {
		return nil, err
	}
	p.sub = sub
	return p, nil
}

// busy reports whether a request may still bring messages, forgetting the
// ones that are over.
func (p *puller) busy(now time.Time) bool {
	p.open = dropWhile(p.open, func(r *pullRequest) bool { return r.over(now) })
	return len(p.open) > 0
}

// over: it brought its batch, its status said it brought all it will, its
// bytes are spent as the server counts them (a request filled to exactly
// max_bytes ends without a word), or its time is up.
func (r *pullRequest) over(now time.Time) bool {
	return r.got >= r.batch || (r.maxBytes > 0 && r.bytes >= r.maxBytes) || !now.Before(r.until)
}

// serverSize is m's size as the server counts it against max_bytes: before
// it added the pin header (genHeader in nats-server: a header line, and
// the header block's first and last lines when the message had none).
// Counted a little short it only makes the request wait for its expiry;
// counted long it lets one more request in, which the channel has room for.
func serverSize(m *nats.Msg) int {
	n := m.Size()
	pin := m.Header.Get(pinHeader)
	if pin == "" {
		return n
	}
	n -= len(pinHeader) + len(": ") + len(pin) + len("\r\n")
	if len(m.Header) == 1 {
		n -= len("NATS/1.0\r\n") + len("\r\n")
	}
	return n
}

func dropWhile(rs []*pullRequest, f func(*pullRequest) bool) []*pullRequest {
	i := 0
	for i < len(rs) && f(rs[i]) {
		i++
	}
	return rs[i:]
}

// ask sends a request for up to batch messages (of at most maxBytes in
// all, when not 0), unless maxOpen requests are still open.
func (p *puller) ask(batch, maxBytes int, now time.Time) error {
	if len(p.open) >= maxOpen {
		return nil
	}
	p.n++
	r := &pullRequest{reply: p.prefix + strconv.FormatUint(p.n, 10), batch: batch, maxBytes: maxBytes, until: now.Add(pull + time.Second)}
	body, _ := json.Marshal(struct {
		Expires  time.Duration `json:"expires"`
		Batch    int           `json:"batch"`
		MaxBytes int           `json:"max_bytes,omitempty"`
		Group    string        `json:"group"`
		PinID    string        `json:"id,omitempty"`
	}{pull, batch, maxBytes, PriorityGroup, p.pin})
	if err := p.nc.PublishRequest(p.subject, r.reply, body); err != nil {
		return err
	}
	p.open = append(p.open, r)
	return nil
}

// read is what one message that came is: a command to take, the end of a
// request, or word that the pin went to another client.
type read int

const (
	readCommand read = iota
	readStatus
	readPinLost
)

// read accounts for m. A status names its request by its reply subject; a
// command counts for the oldest request still open (the server serves them
// in order). Counting is only for asking: a command is taken whatever it
// is counted for.
func (p *puller) read(m *nats.Msg) read {
	if len(m.Data) == 0 && m.Header.Get("Status") != "" {
		switch m.Header.Get("Status") {
		case "423":
			p.pin = ""
			p.open = nil
			return readPinLost
		case "404", "408", "409":
			for _, r := range p.open {
				if r.reply != m.Subject {
					continue
				}
				// The status may overtake what the request brought: its
				// pending count says how many are still to come.
				if pending, err := strconv.Atoi(m.Header.Get("Nats-Pending-Messages")); err == nil && pending < r.batch {
					r.batch -= pending
				} else {
					r.batch = r.got
				}
				r.maxBytes = 0
			}
		}
		return readStatus
	}
	if pin := m.Header.Get(pinHeader); pin != "" {
		p.pin = pin
	}
	for _, r := range p.open {
		if !r.over(time.Time{}) {
			r.got++
			r.bytes += serverSize(m)
			break
		}
	}
	return readCommand
}

func (p *puller) close() { _ = p.sub.Unsubscribe() }
