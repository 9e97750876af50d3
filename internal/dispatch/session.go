package dispatch

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/esim-pipeline/thingspace-esim/internal/batch"
	"github.com/esim-pipeline/thingspace-esim/internal/command"
	"github.com/esim-pipeline/thingspace-esim/internal/device"
	"github.com/esim-pipeline/thingspace-esim/internal/observability"
	"github.com/esim-pipeline/thingspace-esim/internal/order"
)

// held is one command message between its arrival and its ack.
type held struct {
	msg     *nats.Msg
	seq     uint64 // stream sequence
	id      string // commandId
	action  string
	account string
	key     batch.Key
	opts    command.Options
	devices []device.Set          // the valid devices, in command order
	byKey   map[string]device.Set // the same by key, for a wide command only
	tries   uint64                // deliveries so far
	// failure, once set, is why some device ended failed: the command is
	// dead-lettered instead of acknowledged.
	failure string
}

// wideCommand is how many devices a command has before a map finds them:
// a map per command costs more than a one-device command's other parts.
const wideCommand = 16

// setDevices records the command's valid devices.
func (h *held) setDevices(devs []command.Device) {
	h.devices = make([]device.Set, len(devs))
	for i, d := range devs {
		h.devices[i] = d.IDs
	}
	if len(devs) > wideCommand {
		h.byKey = make(map[string]device.Set, len(devs))
		for _, d := range h.devices {
			h.byKey[d.Key()] = d
		}
	}
}

// device is the command's device whose key is key.
func (h *held) device(key string) device.Set {
	if h.byKey != nil {
		return h.byKey[key]
	}
	for _, d := range h.devices {
		if d.Key() == key {
			return d
		}
	}
	return device.Set{}
}

// session is one tenure of the consumer's pin: the commands held, their
// order book and batcher, and the sender and keeper that work on them. It
// ends when the dispatcher stops or loses the pin.
type session struct {
	d   *dispatcher
	pin string

	mu      sync.Mutex
	book    *order.Book
	batcher *batch.Batcher
	held    map[uint64]*held

	wake chan struct{} // the batcher got something
	room chan struct{} // the book holds less

	stop     context.CancelFunc // ends the sender's and keeper's waits
	stopped  context.Context
	work     context.Context // the call in flight and the storing of outcomes
	endWork  context.CancelFunc
	outcomes chan func() // stored in call order by one goroutine
	sent     chan struct{}
	stored   chan struct{}
	aside    sync.WaitGroup // records, deadlines, dead letters and failed events beside the outcomes
	kept     chan struct{}
}

func (d *dispatcher) newSession(ctx context.Context, pin string) *session {
	b, _ := batch.New(d.cfg.batchConfig()) // the config was validated
	s := &session{
		d: d, pin: pin, book: order.New(), batcher: b, held: map[uint64]*held{},
		wake: make(chan struct{}, 1), room: make(chan struct{}, 1),
		outcomes: make(chan func()), sent: make(chan struct{}), stored: make(chan struct{}), kept: make(chan struct{}),
	}
	s.stopped, s.stop = context.WithCancel(ctx)
	s.work, s.endWork = context.WithCancel(context.WithoutCancel(ctx))
	go func() {
		defer close(s.stored)
		for f := range s.outcomes {
			f()
		}
	}()
	go func() { defer close(s.sent); s.sendLoop() }()
	go func() { defer close(s.kept); s.keep() }()
	return s
}

// end stops the session: no new call; the call in flight and the storing
// of outcomes get ShutdownGrace; then what is not acknowledged goes back to
// the stream, in stream order, for whoever holds the pin next.
func (s *session) end() {
	s.stop()
	grace := time.AfterFunc(s.d.cfg.ShutdownGrace, s.endWork)
	defer grace.Stop()
	<-s.sent
	close(s.outcomes)
	<-s.stored
	<-s.kept
	s.aside.Wait()
	s.endWork()

	s.mu.Lock()
	seqs := s.book.HeldSeqs()
	back := make([]*held, 0, len(seqs))
	for _, seq := range seqs {
		back = append(back, s.held[seq])
	}
	s.held = map[uint64]*held{}
	s.book = order.New()
	s.batcher.Drain()
	s.mu.Unlock()
	for _, h := range back {
		if err := h.msg.Nak(); err != nil {
			s.d.log.Debug().Err(err).Str(observability.FieldCommandID, h.id).Msg("nak")
		}
	}
	s.d.m.commands.WithLabelValues("handed_back").Add(float64(len(back)))
	s.d.m.held.Set(0)
	s.d.m.waiting.Set(0)
	if len(back) > 0 {
		s.d.log.Info().Int("commands", len(back)).Msg("commands not finished handed back, in stream order")
	}
}

// minDeviceBytes is less than any device takes in a command body
// ({"deviceIds":[{"kind":"iccid","id":"<19 digits>"}]} is 59 bytes), so a
// pull of at most n*minDeviceBytes bytes brings at most n devices.
const minDeviceBytes = 48

// pullSize is how many messages, and how many bytes of them (0: any), the
// next pull may ask for. When the session is full it says wait: then the
// next pull comes after room is made or a while has passed, and asks for
// one message when what is held waits for a command another dispatcher
// held (the stream redelivers that one before anything newer), else for
// none (a pull that cannot take a message, which keeps the pin).
func (s *session) pullSize() (msgs, bytes int, wait bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	msgs = min(s.d.cfg.MaxHeldCommands-s.book.Held(), maxPull)
	free := s.d.cfg.MaxHeldDevices - s.book.Devices()
	switch {
	case s.book.Held() == 0:
		return 1, 0, false // a command larger than the limit goes alone
	case msgs > 0 && free > 0:
		return msgs, free * minDeviceBytes, false
	case s.book.Stalled():
		return 1, 0, true
	}
	return 1, 1, true
}

// maxPull bounds the messages of one pull.
const maxPull = 1000

// arrive puts a command into the book and acts on what that releases.
func (s *session) arrive(h *held, devs []order.Device, exhausted bool) {
	s.mu.Lock()
	if s.book.Has(h.seq) {
		// A second delivery of a command held here (its keep-alive came
		// late): answer through the newer one.
		s.held[h.seq].msg = h.msg
		s.mu.Unlock()
		return
	}
	s.held[h.seq] = h
	rel, acks := s.book.Arrive(order.Command{Seq: h.seq, Devices: devs, Exhausted: exhausted})
	fails := s.applyLocked(rel)
	s.gaugesLocked()
	s.mu.Unlock()
	s.finish(fails, acks)
}

// settle records that the outcomes of items are stored.
func (s *session) settle(items []batch.Item) {
	s.mu.Lock()
	var fails []batch.Item
	var acks []uint64
	for _, it := range items {
		h := it.Ref.(*held)
		rel, a := s.book.Settle(h.seq, it.Device.Key())
		fails = append(fails, s.applyLocked(rel)...)
		acks = append(acks, a...)
	}
	s.gaugesLocked()
	s.mu.Unlock()
	s.finish(fails, acks)
}

// lift applies a move of the ack floor and the age limit of what the
// takeover read learned.
func (s *session) lift(floor uint64, now time.Time) {
	s.mu.Lock()
	rel, acks := s.book.Floor(floor)
	fails := s.applyLocked(rel)
	r2, a2 := s.book.Expire(now, s.d.awayTTL())
	if len(r2) > 0 || len(a2) > 0 {
		s.d.log.Warn().Int(observability.FieldDevices, len(r2)).Dur("waited", s.d.awayTTL()).
			Msg("commands read at the takeover did not come back; the devices' later commands go on")
	}
	fails = append(fails, s.applyLocked(r2)...)
	acks = append(acks, a2...)
	s.gaugesLocked()
	s.mu.Unlock()
	s.finish(fails, acks)
}

// applyLocked puts released devices into the batcher and returns those to
// end failed.
func (s *session) applyLocked(rel []order.Release) (fails []batch.Item) {
	woke := false
	for _, r := range rel {
		h := s.held[r.Seq]
		it := batch.Item{Device: h.device(r.Device), Ref: h}
		switch r.Do {
		case order.Send:
			s.batcher.Add(h.key, it)
			woke = true
		case order.Fail:
			fails = append(fails, it)
		case order.Skip:
			s.d.m.devices.WithLabelValues("skipped").Inc()
		}
	}
	if woke {
		signal(s.wake)
	}
	return fails
}

func (s *session) gaugesLocked() {
	s.d.m.held.Set(float64(s.book.Held()))
	s.d.m.waiting.Set(float64(s.book.Devices() - s.batcher.Items()))
}

// finish ends out of deliveries the devices fails names, and acknowledges
// the commands acks names.
func (s *session) finish(fails []batch.Item, acks []uint64) {
	if len(fails) > 0 {
		s.exhausted(fails)
	}
	if len(acks) == 0 {
		return
	}
	s.mu.Lock()
	done := make([]*held, 0, len(acks))
	for _, seq := range acks {
		done = append(done, s.held[seq])
		delete(s.held, seq)
	}
	s.mu.Unlock()
	for _, h := range done {
		s.d.acknowledge(s.work, h, &s.aside)
	}
	signal(s.room)
}

// keep keeps held commands alive, follows the ack floor (which lifts what
// the takeover read learned) and samples the backlog, until the session
// stops.
func (s *session) keep() {
	alive := time.NewTicker(s.d.cfg.AckWait / 3)
	defer alive.Stop()
	floor := time.NewTicker(time.Second)
	defer floor.Stop()
	last := time.Time{}
	for {
		select {
		case <-s.stopped.Done():
			return
		case <-alive.C:
			s.mu.Lock()
			msgs := make([]*nats.Msg, 0, len(s.held))
			for _, h := range s.held {
				msgs = append(msgs, h.msg)
			}
			s.mu.Unlock()
			for _, m := range msgs {
				_ = m.InProgress()
			}
		case now := <-floor.C:
			s.mu.Lock()
			away := s.book.Away() > 0
			s.mu.Unlock()
			if !away && now.Sub(last) < s.d.cfg.AckWait/3 {
				continue
			}
			last = now
			ctx, cancel := context.WithTimeout(s.stopped, 2*time.Second)
			info, err := s.d.cons.Info(ctx)
			cancel()
			if err != nil {
				continue
			}
			s.d.m.pending.Set(float64(info.NumPending))
			s.mu.Lock()
			s.d.log.Debug().Int("held", s.book.Held()).Int("away", s.book.Away()).Int(observability.FieldDevices, s.book.Devices()).
				Int("in_batcher", s.batcher.Items()).Uint64("ack_floor", info.AckFloor.Stream).Int("ack_pending", info.NumAckPending).Msg("session")
			s.mu.Unlock()
			s.lift(info.AckFloor.Stream, now)
		}
	}
}

// awayTTL is how long what a takeover read learned holds its devices'
// later commands back before they go anyway: the command may have left the
// stream, or be stuck with a dispatcher that lost its pin.
func (d *dispatcher) awayTTL() time.Duration {
	return 2*d.cfg.AckWait + d.cfg.ShutdownGrace + 10*time.Second
}

// signal wakes whoever waits on c, without blocking.
func signal(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// errStopped reports a session that stopped before an operation ended.
var errStopped = errors.New("dispatcher stopping")
