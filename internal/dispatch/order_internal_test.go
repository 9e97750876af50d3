package dispatch

import (
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"

	"github.com/esim-pipeline/thingspace-esim/internal/batch"
	"github.com/esim-pipeline/thingspace-esim/internal/device"
)

var (
	enableKey  = batch.Key{Action: "enable", Account: "A"}
	disableKey = batch.Key{Action: "disable", Account: "A"}
	devA       = device.Set{}.With(device.ICCID, "89148000000000000001")
	devB       = device.Set{}.With(device.ICCID, "89148000000000000002")
)

// fenceService is a dispatcher with nothing but its batcher and fences.
func fenceService(t *testing.T) *Service {
	t.Helper()
	b, err := batch.New(batch.Config{Default: 10, MaxWait: time.Hour})
	require.NoError(t, err)
	return &Service{cfg: Config{AckWait: 10 * time.Second}, log: zerolog.Nop(), m: newMetrics(prometheus.NewRegistry()),
		batcher: b, fences: map[string][]fence{}, acked: map[uint64]struct{}{}, wake: make(chan struct{}, 1)}
}

// add takes in the item of device d of the command at seq, as accept does.
func (s *Service) add(k batch.Key, d device.Set, seq uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.addLocked(k, batch.Item{Device: d, Ref: &pending{seq: seq}})
}

// sent takes what the send loop would send next, as action@seq per item,
// until the batcher is empty.
func (s *Service) sent(t *testing.T) []string {
	t.Helper()
	var out []string
	for {
		s.mu.Lock()
		g := s.batcher.Take(true)
		if g != nil {
			s.takeLocked(g)
		}
		s.mu.Unlock()
		if g == nil {
			return out
		}
		for _, it := range g.Items {
			out = append(out, g.Key.Action+"@"+it.Device.Get(device.ICCID)[18:]+"/"+strconv.FormatUint(seqOf(it), 10))
		}
	}
}

// A later command of a device whose command was handed back waits, and
// goes behind it when it is sent again; other devices do not wait.
func TestFencedDevicesWaitForTheCommandHandedBack(t *testing.T) {
	s := fenceService(t)
	s.fenceGroup(group{devices: []device.Set{devA}, items: map[string][]batch.Item{devA.Key(): {{Device: devA, Ref: &pending{seq: 1}}}}})
	s.add(disableKey, devA, 2)
	s.add(disableKey, devB, 3)
	require.Equal(t, []string{"disable@02/3"}, s.sent(t), "device 01 waits for its first command")
	require.Len(t, s.parked, 1)

	s.add(enableKey, devA, 1) // back
	require.Equal(t, []string{"enable@01/1", "disable@01/2"}, s.sent(t))
	require.Empty(t, s.parked)
	require.Empty(t, s.fences)
}

// The items of a device that were waiting in the batcher before its fence
// (or came in after it and were parked) go back with the parked ones in
// stream order, whatever batch the batcher had them in.
func TestUnparkedItemsKeepStreamOrderWithThoseInTheBatcher(t *testing.T) {
	s := fenceService(t)
	s.add(disableKey, devA, 7)
	s.add(enableKey, devA, 9) // seals the disable batch
	s.fenceLocked(devA.Key(), 5, time.Now())
	require.Empty(t, s.sent(t), "both wait for command 5")
	s.add(disableKey, devA, 8) // comes in while fenced: parked at once
	s.add(enableKey, devA, 5)  // back
	require.Equal(t, []string{"enable@01/5", "disable@01/7", "disable@01/8", "enable@01/9"}, s.sent(t))

	// The other way round: command 7 of the device still waits in the
	// batcher when the fence of 5 is set, and 9 is parked on the way in.
	s = fenceService(t)
	s.add(disableKey, devA, 7)
	s.fenceLocked(devA.Key(), 5, time.Now())
	s.add(enableKey, devA, 9)
	s.add(enableKey, devA, 5)
	require.Equal(t, []string{"enable@01/5", "disable@01/7", "enable@01/9"}, s.sent(t))
}

// Two commands of a device out at once: a later one waits for both.
func TestADeviceWaitsForEveryCommandOut(t *testing.T) {
	s := fenceService(t)
	now := time.Now()
	s.fenceLocked(devA.Key(), 5, now)
	s.fenceLocked(devA.Key(), 7, now)
	s.add(disableKey, devA, 9)
	s.add(enableKey, devA, 5)
	require.Equal(t, []string{"enable@01/5"}, s.sent(t), "9 still waits for 7")
	s.add(enableKey, devA, 7)
	require.Equal(t, []string{"enable@01/7", "disable@01/9"}, s.sent(t))
}

// A fence lifts when the consumer's ack floor passes it, or after
// fenceTTL; either wakes the send loop.
func TestFencesLiftByAckFloorAndAge(t *testing.T) {
	s := fenceService(t)
	now := time.Now()
	s.fenceLocked(devA.Key(), 1, now)
	s.fenceLocked(devB.Key(), 2, now)
	s.add(disableKey, devA, 3)
	s.add(disableKey, devB, 4)
	require.Empty(t, s.sent(t))

	s.liftAcked(1)
	require.Len(t, s.wake, 1, "the send loop is woken")
	<-s.wake
	require.Equal(t, []string{"disable@01/3"}, s.sent(t))

	s.expireFences(now.Add(s.fenceTTL() - time.Second))
	require.Empty(t, s.sent(t), "not yet")
	s.expireFences(now.Add(s.fenceTTL()))
	require.Equal(t, []string{"disable@02/4"}, s.sent(t))
	require.Empty(t, s.fences)
}

// A fence that ages out while its own command is back in the batcher,
// behind a later command of the device that came in before the fence was
// set: the device's items are put back in stream order.
func TestAFenceLiftedWithoutItsCommandLeavingReordersTheDevice(t *testing.T) {
	s := fenceService(t)
	now := time.Now()
	s.add(disableKey, devA, 10)           // waits in the open disable batch
	s.fenceLocked(devA.Key(), 8, now)     // command 8's call failed meanwhile
	s.add(enableKey, devA, 8)             // 8 is back: seals the disable batch ahead of it
	s.expireFences(now.Add(s.fenceTTL())) // the next call was slow: the fence aged out
	require.Equal(t, []string{"enable@01/8", "disable@01/10"}, s.sent(t))
}

// An item whose command is out but behind an earlier one of its device
// waits, and keeps its fence.
func TestACommandBackWaitsForAnEarlierOneOut(t *testing.T) {
	s := fenceService(t)
	now := time.Now()
	s.fenceLocked(devA.Key(), 8, now)
	s.add(enableKey, devA, 8)
	s.fenceLocked(devA.Key(), 5, now)
	s.add(disableKey, devA, 9)
	require.Empty(t, s.sent(t))
	require.Len(t, s.fences[devA.Key()], 2)
	s.add(enableKey, devA, 5)
	require.Equal(t, []string{"enable@01/5", "enable@01/8", "disable@01/9"}, s.sent(t))
}

// A command that comes back in the same batch as a later one of its device
// does not take it along: another command of the device, under another key,
// may lie between them.
func TestACommandBackLeavesItsFollowersBehindWhatLiesBetween(t *testing.T) {
	s := fenceService(t)
	s.add(enableKey, devA, 112)
	s.fenceLocked(devA.Key(), 94, time.Now())
	s.add(disableKey, devA, 100) // parked at once
	s.add(enableKey, devA, 94)   // back, in the batch of 112
	require.Equal(t, []string{"enable@01/94", "disable@01/100", "enable@01/112"}, s.sent(t))
}

// Random single-device commands, calls that fail (their commands handed
// back, fenced, and taken in again later) and calls that go through: every
// device's commands reach ThingSpace in stream order, each once.
func TestFencesKeepEveryDeviceInOrderUnderRandomFailures(t *testing.T) {
	seeds := int64(500)
	if v, err := strconv.ParseInt(os.Getenv("FENCE_SEEDS"), 10, 64); err == nil {
		seeds = v // a longer search: FENCE_SEEDS=20000
	}
	keys := []batch.Key{enableKey, disableKey}
	for seed := int64(0); seed < seeds; seed++ {
		r := rand.New(rand.NewPCG(uint64(seed), 0))
		s := fenceService(t)
		devs := make([]device.Set, 4)
		for i := range devs {
			devs[i] = device.Set{}.With(device.ICCID, "8914800000000000000"+strconv.Itoa(i))
		}
		type cmd struct {
			key batch.Key
			dev device.Set
		}
		cmds := map[uint64]cmd{}
		var out []uint64 // handed back, not taken in again yet
		sent := map[string][]uint64{}
		var seq uint64
		take := func(fail bool) {
			s.mu.Lock()
			g := s.batcher.Take(true)
			if g != nil {
				s.takeLocked(g)
			}
			s.mu.Unlock()
			if g == nil || len(g.Items) == 0 {
				return
			}
			if fail {
				items := map[string][]batch.Item{}
				for _, it := range g.Items {
					it.Ref.(*pending).finished.Store(true)
					items[it.Device.Key()] = append(items[it.Device.Key()], it)
					out = append(out, seqOf(it))
				}
				s.fenceGroup(group{devices: g.Devices, items: items})
				return
			}
			for _, it := range g.Items {
				sent[it.Device.Key()] = append(sent[it.Device.Key()], seqOf(it))
			}
		}
		back := func() {
			i := r.IntN(len(out))
			q := out[i]
			out = slices.Delete(out, i, i+1)
			s.add(cmds[q].key, cmds[q].dev, q)
		}
		for range 300 {
			switch op := r.IntN(10); {
			case op < 4:
				seq++
				cmds[seq] = cmd{keys[r.IntN(2)], devs[r.IntN(len(devs))]}
				s.add(cmds[seq].key, cmds[seq].dev, seq)
			case op < 8:
				take(r.IntN(4) == 0)
			case len(out) > 0:
				back()
			}
		}
		for len(out) > 0 || s.batcher.Items() > 0 || len(s.parked) > 0 {
			if len(out) > 0 {
				back()
			}
			take(false)
		}
		total := 0
		for dk, seqs := range sent {
			require.True(t, slices.IsSorted(seqs), "seed %d: device %s got %v", seed, dk, seqs)
			require.Len(t, slices.Compact(slices.Clone(seqs)), len(seqs), "seed %d: device %s got a command twice: %v", seed, dk, seqs)
			total += len(seqs)
		}
		require.Equal(t, int(seq), total, "seed %d: every command sent once", seed)
		require.Empty(t, s.fences, "seed %d", seed)
	}
}
