package order

import (
	"cmp"
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
	// Key names the device within its command: [Release.Device] and
	// [Book.Settle] use it, and it is one of the device's lanes.
	Key string
	// Also are the device's other lanes: other identifiers of the same
	// device (its EID beside its ICCID, the eUICC an ICCID is known to be
	// on). A device waits for every earlier command in any of its lanes, so
	// commands naming one eUICC by different identifiers keep publish order.
	Also []string
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

// slot is one device of one command, in each of its lanes.
type slot struct {
	seq   uint64
	dev   string
	lanes []string // dev first
	state state
	done  bool
}

func (s *slot) over() bool { return s.state == settled || s.state == skipped }

// lane is the slots of one identifier that are not acknowledged, by
// sequence (the devices of one command that share an identifier share its
// sequence).
type lane struct {
	entries []*slot
}

// span is where the entries of seq are: [i, j).
func (l *lane) span(seq uint64) (int, int) {
	i, _ := slices.BinarySearchFunc(l.entries, seq, func(e *slot, seq uint64) int { return cmp.Compare(e.seq, seq) })
	j := i
	for j < len(l.entries) && l.entries[j].seq == seq {
		j++
	}
	return i, j
}

// ready reports whether every entry before s, in each of its lanes, is
// settled.
func (b *Book) ready(s *slot) bool {
	for _, k := range s.lanes {
		for _, e := range b.lanes[k].entries {
			if e.seq >= s.seq {
				break
			}
			if !e.over() {
				return false
			}
		}
	}
	return true
}

type cmd struct {
	seq       uint64
	slots     []*slot
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
// delivered elsewhere and is not known to be acknowledged: the commands
// after it in any of lanes (the identifiers its devices name) wait for it.
// A command already known is left alone.
func (b *Book) Learn(seq uint64, lanes []string, now time.Time) {
	if _, ok := b.cmds[seq]; ok {
		return
	}
	c := &cmd{seq: seq, away: true, since: now}
	b.cmds[seq] = c
	b.away[seq] = c
	for _, k := range lanes {
		if slices.ContainsFunc(c.slots, func(s *slot) bool { return s.dev == k }) {
			continue
		}
		sl := &slot{seq: seq, dev: k, lanes: []string{k}, state: away}
		c.slots = append(c.slots, sl)
		b.insert(sl)
	}
}

// insert puts s into each of its lanes, after the entries of its sequence.
func (b *Book) insert(s *slot) {
	for _, k := range s.lanes {
		l := b.lanes[k]
		if l == nil {
			l = &lane{}
			b.lanes[k] = l
		}
		_, j := l.span(s.seq)
		l.entries = slices.Insert(l.entries, j, s)
	}
}

// unlink takes s out of its lanes.
func (b *Book) unlink(s *slot) {
	for _, k := range s.lanes {
		l := b.lanes[k]
		if l == nil {
			continue
		}
		i, j := l.span(s.seq)
		if at := slices.Index(l.entries[i:j], s); at >= 0 {
			l.entries = slices.Delete(l.entries, i+at, i+at+1)
		}
		if len(l.entries) == 0 {
			delete(b.lanes, k)
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
	n := &cmd{seq: c.Seq, slots: make([]*slot, len(c.Devices)), open: len(c.Devices), exhausted: c.Exhausted}
	b.cmds[c.Seq] = n
	b.held++
	b.devices += len(c.Devices)
	var s step
	for i, d := range c.Devices {
		lanes := []string{d.Key}
		for _, k := range d.Also {
			if !slices.Contains(lanes, k) {
				lanes = append(lanes, k)
			}
		}
		sl := &slot{seq: c.Seq, dev: d.Key, lanes: lanes, state: waiting, done: d.Done}
		n.slots[i] = sl
		b.insert(sl)
		s.lanes = append(s.lanes, lanes...)
	}
	b.advanceAll(&s)
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
	i, j := l.span(seq)
	at := slices.IndexFunc(l.entries[i:j], func(e *slot) bool { return e.dev == device && e.state == out })
	if at < 0 {
		return nil, nil
	}
	sl := l.entries[i+at]
	sl.state = settled
	b.out--
	c.open--
	var s step
	s.lanes = append(s.lanes, sl.lanes...)
	b.advanceAll(&s)
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
		for _, sl := range c.slots {
			s.lanes = append(s.lanes, sl.lanes...)
		}
	}
	b.advanceAll(&s)
	return b.finish(&s)
}

// forget removes an away command and its entries.
func (b *Book) forget(c *cmd) {
	delete(b.cmds, c.seq)
	delete(b.away, c.seq)
	for _, sl := range c.slots {
		b.unlink(sl)
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

// advanceAll advances every lane of s.lanes, and the lanes that skips
// there add, until nothing more moves.
func (b *Book) advanceAll(s *step) {
	for len(s.lanes) > 0 {
		k := s.lanes[0]
		s.lanes = s.lanes[1:]
		b.advance(k, s)
	}
}

// advance releases the waiting entries of device's lane that nothing
// earlier holds back in any of their lanes, skipping through entries that
// an earlier delivery already settled.
func (b *Book) advance(device string, s *step) {
	l := b.lanes[device]
	if l == nil {
		return
	}
	var blocked bool
	var at uint64 // the sequence of the first entry not over
	for _, e := range l.entries {
		if blocked && e.seq > at {
			return
		}
		switch e.state {
		case settled, skipped:
			continue
		case waiting:
			if !b.ready(e) {
				break
			}
			c := b.cmds[e.seq]
			if e.done {
				e.state = skipped
				c.open--
				s.released = append(s.released, Release{Seq: e.seq, Device: e.dev, Do: Skip})
				s.check(c)
				s.lanes = append(s.lanes, e.lanes...) // what waited on it elsewhere
				continue
			}
			do := Send
			if c.exhausted {
				do = Fail
			}
			e.state = out
			b.out++
			s.released = append(s.released, Release{Seq: e.seq, Device: e.dev, Do: do})
		}
		if !blocked {
			blocked, at = true, e.seq
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
	b.devices -= len(c.slots)
	for _, sl := range c.slots {
		b.unlink(sl)
	}
}
