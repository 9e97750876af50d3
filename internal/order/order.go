package order

import (
	"slices"
	"time"
)

// Do is what becomes of one device of one command once nothing earlier
// holds it back.
type Do uint8

const (
	// Send: put it into a batch for ThingSpace.
	Send Do = iota
	// Skip: an earlier delivery already carried it to ThingSpace and its
	// outcome is stored; it is settled as it is.
	Skip
	// Fail: the command ran out of deliveries; end the device failed.
	Fail
)

func (d Do) String() string {
	switch d {
	case Send:
		return "send"
	case Skip:
		return "skip"
	case Fail:
		return "fail"
	}
	return "unknown"
}

// Release is one device of one command that may go now.
type Release struct {
	Seq    uint64 // the command's stream sequence
	Device string // the device's key
	Do     Do
}

// Device is one device of a command as it arrives.
type Device struct {
	Key string
	// Done says an earlier delivery settled it: the status stream holds an
	// outcome of this command, or of a later one, for this device and action.
	Done bool
}

// Command is a command message as it arrives at this dispatcher.
type Command struct {
	Seq     uint64 // stream sequence: the publish order
	Devices []Device
	// Exhausted says it was delivered more times than allowed: its devices
	// end failed instead of being sent.
	Exhausted bool
}

// state is where one device of one command stands.
type state uint8

const (
	away    state = iota // known from a takeover read, not here
	waiting              // here; an earlier command of the device is not settled
	out                  // released as Send or Fail; its outcome is not stored yet
	settled              // its outcome is stored
	skipped              // settled as Skip
)

type entry struct {
	seq   uint64
	state state
	done  bool
}

// lane is one device's commands that are not acknowledged, by sequence.
type lane struct {
	entries []entry
}

func (l *lane) find(seq uint64) (int, bool) {
	return slices.BinarySearchFunc(l.entries, seq, func(e entry, seq uint64) int {
		switch {
		case e.seq < seq:
			return -1
		case e.seq > seq:
			return 1
		}
		return 0
	})
}

type cmd struct {
	seq       uint64
	devices   []string
	open      int // devices not settled
	exhausted bool
	away      bool
	since     time.Time // when a takeover read learned it
}

// Book is the order of every device's commands that this dispatcher knows
// and that are not acknowledged. Not safe for concurrent use.
type Book struct {
	lanes   map[string]*lane
	cmds    map[uint64]*cmd
	away    map[uint64]*cmd
	held    int
	devices int
	out     int // entries released as Send or Fail, not settled
}

// New returns an empty book.
func New() *Book {
	return &Book{lanes: map[string]*lane{}, cmds: map[uint64]*cmd{}, away: map[uint64]*cmd{}}
}

// Held is the number of commands here (arrived, not acknowledged).
func (b *Book) Held() int { return b.held }

// Devices is the number of devices of the commands here.
func (b *Book) Devices() int { return b.devices }

// Away is the number of commands known only from a takeover read.
func (b *Book) Away() int { return len(b.away) }

// Stalled reports whether nothing here can move until a command known only
// from the takeover read comes: something is held, and no device of it is
// released and waiting for its outcome.
func (b *Book) Stalled() bool { return b.held > 0 && b.out == 0 && len(b.away) > 0 }

// Has reports whether the command at seq is here.
func (b *Book) Has(seq uint64) bool {
	c, ok := b.cmds[seq]
	return ok && !c.away
}

// HeldSeqs lists the commands here, in stream order.
func (b *Book) HeldSeqs() []uint64 {
	out := make([]uint64, 0, b.held)
	for seq, c := range b.cmds {
		if !c.away {
			out = append(out, seq)
		}
	}
	slices.Sort(out)
	return out
}

// Learn records, from a takeover read, that the command at seq was
// delivered elsewhere and is not known to be acknowledged: the devices'
// later commands wait for it. A command already known is left alone.
func (b *Book) Learn(seq uint64, devices []string, now time.Time) {
	if _, ok := b.cmds[seq]; ok {
		return
	}
	c := &cmd{seq: seq, devices: devices, away: true, since: now}
	b.cmds[seq] = c
	b.away[seq] = c
	for _, k := range devices {
		l := b.lanes[k]
		if l == nil {
			l = &lane{}
			b.lanes[k] = l
		}
		i, found := l.find(seq)
		if !found {
			l.entries = slices.Insert(l.entries, i, entry{seq: seq, state: away})
		}
	}
}

// Arrive takes in a command delivered here and returns what of it, and of
// the commands behind it, may go now, and the commands that may now be
// acknowledged. A second delivery of a command already here changes nothing.
func (b *Book) Arrive(c Command) ([]Release, []uint64) {
	if prev, ok := b.cmds[c.Seq]; ok {
		if !prev.away {
			return nil, nil
		}
		b.forget(prev)
	}
	n := &cmd{seq: c.Seq, devices: make([]string, len(c.Devices)), open: len(c.Devices), exhausted: c.Exhausted}
	b.cmds[c.Seq] = n
	b.held++
	b.devices += len(c.Devices)
	var s step
	for i, d := range c.Devices {
		n.devices[i] = d.Key
		l := b.lanes[d.Key]
		if l == nil {
			l = &lane{}
			b.lanes[d.Key] = l
		}
		i, _ := l.find(c.Seq)
		l.entries = slices.Insert(l.entries, i, entry{seq: c.Seq, state: waiting, done: d.Done})
	}
	for _, k := range n.devices {
		b.advance(k, &s)
	}
	s.check(n)
	return b.finish(&s)
}

// Settle records that the outcome of the command at seq for device is
// stored, and returns what may go and be acknowledged now.
func (b *Book) Settle(seq uint64, device string) ([]Release, []uint64) {
	c, ok := b.cmds[seq]
	l := b.lanes[device]
	if !ok || c.away || l == nil {
		return nil, nil
	}
	i, found := l.find(seq)
	if !found || l.entries[i].state != out {
		return nil, nil
	}
	l.entries[i].state = settled
	b.out--
	c.open--
	var s step
	b.advance(device, &s)
	s.check(c)
	return b.finish(&s)
}

// Floor lifts what a takeover read learned of the commands at or below the
// consumer's ack floor: they are acknowledged.
func (b *Book) Floor(floor uint64) ([]Release, []uint64) {
	return b.lift(func(c *cmd) bool { return c.seq <= floor })
}

// Expire lifts what a takeover read learned longer than ttl ago: those
// commands are not coming here.
func (b *Book) Expire(now time.Time, ttl time.Duration) ([]Release, []uint64) {
	return b.lift(func(c *cmd) bool { return now.Sub(c.since) >= ttl })
}

func (b *Book) lift(pick func(*cmd) bool) ([]Release, []uint64) {
	var s step
	for _, c := range b.away {
		if !pick(c) {
			continue
		}
		b.forget(c)
		s.lanes = append(s.lanes, c.devices...)
	}
	for _, k := range s.lanes {
		b.advance(k, &s)
	}
	return b.finish(&s)
}

// forget removes an away command and its entries.
func (b *Book) forget(c *cmd) {
	delete(b.cmds, c.seq)
	delete(b.away, c.seq)
	for _, k := range c.devices {
		l := b.lanes[k]
		if l == nil {
			continue
		}
		if i, found := l.find(c.seq); found {
			l.entries = slices.Delete(l.entries, i, i+1)
		}
		if len(l.entries) == 0 {
			delete(b.lanes, k)
		}
	}
}

// step collects what one change releases and makes acknowledgeable.
type step struct {
	released []Release
	ackable  []uint64
	pending  []*cmd
	lanes    []string
}

func (s *step) check(c *cmd) {
	if c != nil {
		s.pending = append(s.pending, c)
	}
}

// advance releases the first waiting entry of device's lane when every
// entry before it is settled, skipping through entries that an earlier
// delivery already settled.
func (b *Book) advance(device string, s *step) {
	l := b.lanes[device]
	if l == nil {
		return
	}
	for i := range l.entries {
		e := &l.entries[i]
		switch e.state {
		case settled, skipped:
			continue
		case waiting:
			c := b.cmds[e.seq]
			if e.done {
				e.state = skipped
				c.open--
				s.released = append(s.released, Release{Seq: e.seq, Device: device, Do: Skip})
				s.check(c)
				continue
			}
			do := Send
			if c.exhausted {
				do = Fail
			}
			e.state = out
			b.out++
			s.released = append(s.released, Release{Seq: e.seq, Device: device, Do: do})
			return
		default: // out, away
			return
		}
	}
}

// finish takes out of the book every command checked whose devices are
// all settled: it may be acknowledged.
func (b *Book) finish(s *step) ([]Release, []uint64) {
	for _, c := range s.pending {
		if c.away || c.open > 0 {
			continue
		}
		if cur, ok := b.cmds[c.seq]; !ok || cur != c {
			continue // taken out already
		}
		b.remove(c)
		s.ackable = append(s.ackable, c.seq)
	}
	return s.released, s.ackable
}

// remove takes a settled command out of the book.
func (b *Book) remove(c *cmd) {
	delete(b.cmds, c.seq)
	b.held--
	b.devices -= len(c.devices)
	for _, k := range c.devices {
		l := b.lanes[k]
		if i, found := l.find(c.seq); found {
			l.entries = slices.Delete(l.entries, i, i+1)
		}
		if len(l.entries) == 0 {
			delete(b.lanes, k)
		}
	}
}
