package dispatch

import (
	"context"
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/esim-pipeline/thingspace-esim/internal/broker"
)

// puller pulls commands with pull requests of its own rather than
// nats.go's Fetch. Fetch counts a pull's bytes itself and ends it once it
// counted max_bytes; on a pinned consumer it counts the Nats-Pin-Id header
// that the server adds and does not count, so it ends early, and what the
// server sends after is dropped (to come back only after its ack wait).
// Here every request ends when the server says so (the batch done, 408,
// 409), or at its expiry, and nothing it sends is dropped.
type puller struct {
	nc      *nats.Conn
	subject string // the consumer's next-message API subject
	pin     string // the pin id this client holds, "" when none
}

func newPuller(nc *nats.Conn, js jetstream.JetStream) *puller {
	prefix := js.Options().APIPrefix
	if prefix == "" {
		prefix = "$JS.API."
	}
	if !strings.HasSuffix(prefix, ".") {
		prefix += "."
	}
	return &puller{nc: nc, subject: prefix + "CONSUMER.MSG.NEXT." + broker.CommandStream + "." + broker.DispatcherConsumer}
}

// errPinLost reports that the server gave the pin to another client.
var errPinLost = errors.New("the pin went to another dispatcher")

type pullRequest struct {
	Expires  time.Duration `json:"expires"`
	Batch    int           `json:"batch"`
	MaxBytes int           `json:"max_bytes,omitempty"`
	Group    string        `json:"group"`
	PinID    string        `json:"id,omitempty"`
}

// pull asks for up to batch messages (of at most maxBytes in all, when
// not 0) and hands each to take as it comes; it returns when the request
// ended: errPinLost when the pin went elsewhere. A request whose bytes the
// server counted to exactly maxBytes ends without a word: at its expiry.
func (p *puller) pull(ctx context.Context, batch, maxBytes int, take func(*nats.Msg)) error {
	msgs := make(chan *nats.Msg, batch+8)
	sub, err := p.nc.ChanSubscribe(p.nc.NewInbox(), msgs)
	if err != nil {
		return err
	}
	defer func() { _ = sub.Unsubscribe() }()
	req, _ := json.Marshal(pullRequest{Expires: pull, Batch: batch, MaxBytes: maxBytes, Group: PriorityGroup, PinID: p.pin})
	if err := p.nc.PublishRequest(p.subject, sub.Subject, req); err != nil {
		return err
	}
	// The server ends the request by its expiry; messages it sent before
	// are delivered here by then (taking them may take longer): once it is
	// over, what arrived is still taken.
	expiry := time.NewTimer(pull + time.Second)
	defer expiry.Stop()
	rest := func(take func(*nats.Msg)) {
		_ = sub.Unsubscribe()
		for {
			select {
			case m := <-msgs:
				if len(m.Data) > 0 || m.Header.Get("Status") == "" {
					take(m)
				}
			default:
				return
			}
		}
	}
	// Only the server's count of bytes ends a request (409): the client
	// cannot know how it counts (not the header block it adds for the pin).
	// On a cluster the status that ends a request may overtake the messages
	// it sent: its pending count says how many to wait for still.
	want := batch
	for got := 0; got < want; {
		select {
		case <-ctx.Done():
			// Stopping: what came is handed back at once.
			rest(func(m *nats.Msg) { _ = m.Nak() })
			return ctx.Err()
		case <-expiry.C:
			rest(take)
			return nil
		case m := <-msgs:
			if len(m.Data) == 0 && m.Header.Get("Status") != "" {
				switch m.Header.Get("Status") {
				case "100": // heartbeat
					continue
				case "423":
					p.pin = ""
					return errPinLost
				case "404", "408", "409":
					pending, err := strconv.Atoi(m.Header.Get("Nats-Pending-Messages"))
					if err != nil || batch-pending <= got {
						return nil
					}
					want = batch - pending
					continue
				}
				return errors.New("pull: " + m.Header.Get("Status") + " " + m.Header.Get("Description"))
			}
			got++
			if pin := m.Header.Get(pinHeader); pin != "" {
				p.pin = pin
			}
			take(m)
		}
	}
	return nil
}
