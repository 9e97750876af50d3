package order_test

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"pgregory.net/rapid"

	"github.com/esim-pipeline/thingspace-esim/internal/order"
)

// world is a command stream, the dispatchers that take it one after the
// other (each crash starts a new one with an empty book), ThingSpace's
// record of what it was sent, and the status stream's latest event per
// action and device. It follows JetStream where that matters: first
// deliveries in stream order, a crash makes what was delivered and not
// acknowledged come back, in stream order but interleaved with first
// deliveries of newer commands, and a takeover read learns everything
// between the ack floor and the last delivered message.
type world struct {
	t          *rapid.T
	maxDeliver int

	cmds       []wcmd // by seq-1
	acked      []bool
	deliveries []int
	held       map[uint64]bool // delivered to the current dispatcher, not acked
	redeliver  []uint64        // handed back by a crash, in stream order
	next       uint64          // next seq to deliver the first time
	delivered  uint64          // highest seq delivered

	book     *order.Book
	fresh    bool // the current dispatcher has had no message yet
	released []order.Release
	called   []order.Release // at ThingSpace (or failed), outcome not stored

	outcomes map[[2]string][]uint64 // action, device -> seqs of the outcomes stored
	sent     map[string][]uint64    // device -> seqs ThingSpace was sent, in order
	failed   map[[2]string]bool     // seq, device that ended failed
	skipped  map[[2]string]bool
	stored   map[[2]string]bool // seq, device whose outcome was stored once
	now      time.Time
}

type wcmd struct {
	action  string
	devices []string            // each device's key
	also    map[string][]string // a device's other lanes
}

// lanes are the identifiers device names in c: its key and its others.
func (c wcmd) lanes(device string) []string { return append([]string{device}, c.also[device]...) }

// allLanes are the identifiers of every device of c, as a takeover read
// learns them.
func (c wcmd) allLanes() []string {
	var out []string
	for _, d := range c.devices {
		out = append(out, c.lanes(d)...)
	}
	return out
}

// universe is what a command may name of a device: profiles P1a and P1b on
// the eUICC E1, P2a on E2, named with their EID or alone (the link not
// known), the eUICCs alone, and a device of no eUICC.
var universe = []struct {
	key  string
	also []string
}{
	{"P1a", []string{"E1"}}, {"P1a", nil}, {"P1b", []string{"E1"}}, {"P1b", nil}, {"E1", nil},
	{"P2a", []string{"E2"}}, {"E2", nil}, {"d5", nil},
}

func newWorld(t *rapid.T) *world {
	return &world{
		t: t, maxDeliver: rapid.IntRange(1, 4).Draw(t, "maxDeliver"),
		held: map[uint64]bool{}, next: 1, book: order.New(), fresh: true,
		outcomes: map[[2]string][]uint64{}, sent: map[string][]uint64{},
		failed: map[[2]string]bool{}, skipped: map[[2]string]bool{}, stored: map[[2]string]bool{},
		now: time.Unix(0, 0),
	}
}

func (w *world) publish() {
	picks := rapid.SliceOfNDistinct(rapid.IntRange(0, len(universe)-1), 0, 3, func(i int) string { return universe[i].key }).Draw(w.t, "devices")
	c := wcmd{action: rapid.SampledFrom([]string{"enable", "disable"}).Draw(w.t, "action"), also: map[string][]string{}}
	for _, i := range picks {
		c.devices = append(c.devices, universe[i].key)
		c.also[universe[i].key] = universe[i].also
	}
	w.cmds = append(w.cmds, c)
	w.t.Logf("publish %d %v", len(w.cmds), w.cmds[len(w.cmds)-1])
	w.acked = append(w.acked, false)
	w.deliveries = append(w.deliveries, 0)
}

func (w *world) cmd(seq uint64) wcmd { return w.cmds[seq-1] }

// floor is the consumer's ack floor: every command at or below it is acked.
func (w *world) floor() uint64 {
	var f uint64
	for f < uint64(len(w.acked)) && w.acked[f] {
		f++
	}
	return f
}

// deliver hands the next message to the current dispatcher: a redelivery or
// a first delivery, whichever the draw picks.
func (w *world) deliver(redelivery bool) bool {
	var seq uint64
	switch {
	case redelivery && len(w.redeliver) > 0:
		seq, w.redeliver = w.redeliver[0], w.redeliver[1:]
		if w.acked[seq-1] {
			return true
		}
	case w.next <= uint64(len(w.cmds)):
		seq = w.next
		w.next++
		w.delivered = seq
	default:
		return false
	}
	if w.fresh {
		// The takeover read: what lies between the ack floor and the last
		// delivered message, acked or not.
		w.fresh = false
		for s := w.floor() + 1; s <= w.delivered; s++ {
			w.book.Learn(s, w.cmd(s).allLanes(), w.now)
		}
	}
	w.deliveries[seq-1]++
	w.held[seq] = true
	c := w.cmd(seq)
	in := order.Command{Seq: seq, Exhausted: w.deliveries[seq-1] > w.maxDeliver}
	for _, d := range c.devices {
		// What the dispatcher reads: the status stream holds an outcome of
		// this command or a later one for the device and action.
		done := w.deliveries[seq-1] > 1 && slices.ContainsFunc(w.outcomes[[2]string{c.action, d}], func(s uint64) bool { return s >= seq })
		in.Devices = append(in.Devices, order.Device{Key: d, Also: c.also[d], Done: done})
	}
	w.t.Logf("deliver %d (delivery %d) %+v", seq, w.deliveries[seq-1], in.Devices)
	w.apply(w.book.Arrive(in))
	return true
}

func (w *world) apply(rel []order.Release, acks []uint64) {
	if len(rel)+len(acks) > 0 {
		w.t.Logf("  released %v acked %v", rel, acks)
	}
	for _, r := range rel {
		switch r.Do {
		case order.Skip:
			require.True(w.t, w.stored[[2]string{fmt.Sprint(r.Seq), r.Device}], "a skip needs the command's outcome stored before")
			w.skipped[[2]string{fmt.Sprint(r.Seq), r.Device}] = true
		default:
			w.released = append(w.released, r)
		}
	}
	for _, seq := range acks {
		require.False(w.t, w.acked[seq-1], "command %d acked twice", seq)
		require.True(w.t, w.held[seq], "command %d acked without being here", seq)
		w.acked[seq-1] = true
		delete(w.held, seq)
	}
}

// call sends one released device to ThingSpace (a Fail goes nowhere).
func (w *world) call(i int) {
	r := w.released[i]
	w.released = slices.Delete(w.released, i, i+1)
	if r.Do == order.Send {
		for _, l := range w.cmd(r.Seq).lanes(r.Device) {
			w.sent[l] = append(w.sent[l], r.Seq)
		}
	}
	w.t.Logf("call %v", r)
	w.called = append(w.called, r)
}

// store stores the outcome of one call: its event becomes the latest.
func (w *world) store(i int) {
	r := w.called[i]
	w.called = slices.Delete(w.called, i, i+1)
	k := [2]string{w.cmd(r.Seq).action, r.Device}
	w.outcomes[k] = append(w.outcomes[k], r.Seq)
	w.stored[[2]string{fmt.Sprint(r.Seq), r.Device}] = true
	w.t.Logf("store %v", r)
	if r.Do == order.Fail {
		w.failed[[2]string{fmt.Sprint(r.Seq), r.Device}] = true
	}
	w.apply(w.book.Settle(r.Seq, r.Device))
}

// crash ends the current dispatcher: what it held comes back, what it had
// sent and not stored stays sent.
func (w *world) crash() {
	w.t.Logf("crash, held %v", w.held)
	for seq := range w.held {
		w.redeliver = append(w.redeliver, seq)
	}
	slices.Sort(w.redeliver)
	w.redeliver = slices.Compact(w.redeliver)
	w.held = map[uint64]bool{}
	w.book, w.fresh, w.released, w.called = order.New(), true, nil, nil
}

// settleAll runs without faults until every command is acknowledged.
func (w *world) settleAll() {
	for range 100_000 {
		switch {
		case len(w.called) > 0:
			w.store(0)
		case len(w.released) > 0:
			w.call(0)
		case w.deliver(true):
		default:
			w.apply(w.book.Floor(w.floor()))
			if w.floor() == uint64(len(w.cmds)) {
				return
			}
			if len(w.released) == 0 && len(w.called) == 0 && len(w.redeliver) == 0 && w.next > uint64(len(w.cmds)) {
				w.t.Fatalf("stuck: floor %d of %d, book holds %d (away %d)", w.floor(), len(w.cmds), w.book.Held(), w.book.Away())
			}
		}
	}
	w.t.Fatal("did not settle")
}

// check: every device of every command was sent, skipped after an earlier
// send, or failed; for every identifier (a device's key, the eUICC it is
// named with), the commands ThingSpace saw first, and the ones it saw last,
// are each in publish order.
func (w *world) check() {
	for i, c := range w.cmds {
		seq := uint64(i + 1)
		for _, d := range c.devices {
			k := [2]string{fmt.Sprint(seq), d}
			require.True(w.t, slices.Contains(w.sent[d], seq) || w.failed[k], // d is a lane of its own
				"command %d device %s neither reached ThingSpace nor failed (skipped %v)", seq, d, w.skipped[k])
		}
	}
	for d, seqs := range w.sent {
		var first, last []uint64
		for _, s := range seqs {
			if !slices.Contains(first, s) {
				first = append(first, s)
			}
			last = slices.DeleteFunc(last, func(x uint64) bool { return x == s })
			last = append(last, s)
		}
		first, last = slices.Compact(first), slices.Compact(last) // one command's profiles of one eUICC
		require.True(w.t, slices.IsSorted(first), "device %s: first sends %v out of publish order (all: %v)", d, first, seqs)
		require.True(w.t, slices.IsSorted(last), "device %s: last sends %v out of publish order (all: %v)", d, last, seqs)
	}
}

// TestEveryDeviceKeepsPublishOrderThroughCrashesAndTakeovers runs random
// interleavings of publishes, deliveries and redeliveries, calls, stored
// outcomes, ack-floor moves and crashes.
func TestEveryDeviceKeepsPublishOrderThroughCrashesAndTakeovers(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		w := newWorld(t)
		steps := rapid.IntRange(1, 120).Draw(t, "steps")
		for range steps {
			switch rapid.IntRange(0, 9).Draw(t, "op") {
			case 0, 1:
				if len(w.cmds) < 25 {
					w.publish()
				}
			case 2, 3:
				w.deliver(rapid.Bool().Draw(t, "redelivery first"))
			case 4, 5:
				if len(w.released) > 0 {
					w.call(rapid.IntRange(0, len(w.released)-1).Draw(t, "call"))
				}
			case 6, 7:
				if len(w.called) > 0 {
					w.store(rapid.IntRange(0, len(w.called)-1).Draw(t, "store"))
				}
			case 8:
				w.apply(w.book.Floor(w.floor()))
			case 9:
				w.crash()
			}
		}
		w.settleAll()
		w.check()
		require.Zero(t, w.book.Held())
	})
}

func TestAWaitingDeviceGoesOnceTheOneBeforeIsStored(t *testing.T) {
	b := order.New()
	rel, acks := b.Arrive(order.Command{Seq: 1, Devices: []order.Device{{Key: "a"}, {Key: "b"}}})
	require.Equal(t, []order.Release{{Seq: 1, Device: "a", Do: order.Send}, {Seq: 1, Device: "b", Do: order.Send}}, rel)
	require.Empty(t, acks)
	rel, acks = b.Arrive(order.Command{Seq: 2, Devices: []order.Device{{Key: "b"}}})
	require.Empty(t, rel, "b waits for command 1")
	require.Empty(t, acks)

	rel, acks = b.Settle(1, "b")
	require.Equal(t, []order.Release{{Seq: 2, Device: "b", Do: order.Send}}, rel)
	require.Empty(t, acks, "command 1 still has a")
	rel, acks = b.Settle(2, "b")
	require.Empty(t, rel)
	require.Equal(t, []uint64{2}, acks, "command 2 is settled: a redelivery of 1 would find its outcome for b")
	_, acks = b.Settle(1, "a")
	require.Equal(t, []uint64{1}, acks)
	require.Zero(t, b.Held())
	require.Zero(t, b.Devices())
}

func TestATakeoverReadHoldsTheDeviceUntilTheCommandComesOrTheFloorPasses(t *testing.T) {
	now := time.Unix(100, 0)
	b := order.New()
	b.Learn(5, []string{"a"}, now)
	b.Learn(6, []string{"b"}, now)
	rel, _ := b.Arrive(order.Command{Seq: 7, Devices: []order.Device{{Key: "a"}, {Key: "b"}, {Key: "c"}}})
	require.Equal(t, []order.Release{{Seq: 7, Device: "c", Do: order.Send}}, rel, "only c is free")

	require.False(t, b.Stalled(), "c is out")
	b.Settle(7, "c")
	require.True(t, b.Stalled(), "only 5 and 6, not here, can free 7")
	rel, _ = b.Arrive(order.Command{Seq: 5, Devices: []order.Device{{Key: "a", Done: true}}})
	require.Equal(t, []order.Release{{Seq: 5, Device: "a", Do: order.Skip}, {Seq: 7, Device: "a", Do: order.Send}}, rel,
		"the redelivered 5 was done already: skipped, and 7 goes")

	rel, _ = b.Floor(6)
	require.Equal(t, []order.Release{{Seq: 7, Device: "b", Do: order.Send}}, rel, "6 was acked elsewhere")

	b.Learn(9, []string{"d"}, now)
	rel, _ = b.Arrive(order.Command{Seq: 10, Devices: []order.Device{{Key: "d"}}})
	require.Empty(t, rel)
	rel, _ = b.Expire(now.Add(time.Minute), 2*time.Minute)
	require.Empty(t, rel)
	rel, _ = b.Expire(now.Add(2*time.Minute), 2*time.Minute)
	require.Equal(t, []order.Release{{Seq: 10, Device: "d", Do: order.Send}}, rel)
}

func TestAnExhaustedCommandFailsInItsTurn(t *testing.T) {
	b := order.New()
	b.Arrive(order.Command{Seq: 1, Devices: []order.Device{{Key: "a"}}})
	rel, _ := b.Arrive(order.Command{Seq: 2, Devices: []order.Device{{Key: "a"}}, Exhausted: true})
	require.Empty(t, rel)
	rel, _ = b.Settle(1, "a")
	require.Equal(t, []order.Release{{Seq: 2, Device: "a", Do: order.Fail}}, rel)
}

func TestACommandWithNoValidDeviceIsAcknowledgedAtOnce(t *testing.T) {
	b := order.New()
	rel, acks := b.Arrive(order.Command{Seq: 3})
	require.Empty(t, rel)
	require.Equal(t, []uint64{3}, acks)
	_, acks = b.Arrive(order.Command{Seq: 3})
	require.Equal(t, []uint64{3}, acks, "a second delivery (an ack lost) is acknowledged again")
}

// A device_suspend of an eUICC and a resume of one of its profiles name one
// device: where the profile is known to be on it, the later waits.
func TestCommandsNamingOneEUICCByDifferentIdentifiersKeepOrder(t *testing.T) {
	b := order.New()
	rel, _ := b.Arrive(order.Command{Seq: 1, Devices: []order.Device{{Key: "E1"}}}) // device_suspend
	require.Equal(t, []order.Release{{Seq: 1, Device: "E1", Do: order.Send}}, rel)
	rel, _ = b.Arrive(order.Command{Seq: 2, Devices: []order.Device{{Key: "P1", Also: []string{"E1"}}}}) // resume, linked
	require.Empty(t, rel, "the resume waits for the eUICC's suspend")
	rel, _ = b.Arrive(order.Command{Seq: 3, Devices: []order.Device{{Key: "P2"}}}) // resume, link unknown
	require.Equal(t, []order.Release{{Seq: 3, Device: "P2", Do: order.Send}}, rel, "no known link, no wait")
	rel, _ = b.Settle(1, "E1")
	require.Equal(t, []order.Release{{Seq: 2, Device: "P1", Do: order.Send}}, rel)

	// The profiles of one eUICC in one command do not wait for each other.
	rel, _ = b.Arrive(order.Command{Seq: 4, Devices: []order.Device{{Key: "P3", Also: []string{"E2"}}, {Key: "P4", Also: []string{"E2"}}}})
	require.Len(t, rel, 2)
}
