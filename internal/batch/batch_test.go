package batch_test

import (
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/esim-pipeline/thingspace-esim/internal/batch"
	"github.com/esim-pipeline/thingspace-esim/internal/device"
)

type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

func dev(n int) device.Set {
	return device.Set{ICCID: "8914800000000000" + strconv.Itoa(1000+n)}
}

func newBatcher(t *testing.T, max int, wait time.Duration) (*batch.Batcher, *clock) {
	t.Helper()
	c := &clock{t: time.Unix(1_700_000_000, 0)}
	b, err := batch.New(batch.Config{Default: max, MaxWait: wait, Now: c.now})
	require.NoError(t, err)
	return b, c
}

var (
	enable  = batch.Key{Action: "enable", Account: "A", Options: "x"}
	disable = batch.Key{Action: "disable", Account: "A", Options: "x"}
)

func TestBatcher(t *testing.T) {
	t.Run("a_full_batch_is_ready_at_once_and_the_rest_waits", func(t *testing.T) {
		b, c := newBatcher(t, 3, time.Second)
		for i := range 4 {
			b.Add(enable, batch.Item{Device: dev(i)})
		}
		require.True(t, b.Ready())
		g := b.Take(false)
		require.Len(t, g.Devices, 3)
		require.False(t, b.Ready(), "the fourth device waits for MaxWait")
		c.t = c.t.Add(time.Second)
		require.True(t, b.Ready())
		require.Len(t, b.Take(false).Devices, 1)
		require.Nil(t, b.Take(false))
		require.Zero(t, b.Items())
	})
	t.Run("the_same_device_twice_in_one_batch_is_sent_once", func(t *testing.T) {
		b, _ := newBatcher(t, 10, 0)
		b.Add(enable, batch.Item{Device: dev(1), Ref: "c1"})
		b.Add(enable, batch.Item{Device: dev(1), Ref: "c2"})
		g := b.Take(false)
		require.Len(t, g.Devices, 1)
		require.Len(t, g.Items, 2)
	})
	t.Run("a_device_asked_for_under_another_key_keeps_its_order", func(t *testing.T) {
		b, _ := newBatcher(t, 100, time.Hour)
		b.Add(enable, batch.Item{Device: dev(1), Ref: "enable-1"})
		b.Add(enable, batch.Item{Device: dev(2), Ref: "enable-2"})
		b.Add(disable, batch.Item{Device: dev(3), Ref: "disable-3"})
		b.Add(disable, batch.Item{Device: dev(1), Ref: "disable-1"}) // seals the enable batch
		b.Add(enable, batch.Item{Device: dev(1), Ref: "enable-1b"})  // seals the disable batch
		first := b.Take(false)
		require.Equal(t, "enable", first.Key.Action)
		require.Equal(t, []any{"enable-1", "enable-2"}, refs(first))
		second := b.Take(false)
		require.Equal(t, "disable", second.Key.Action)
		require.Equal(t, []any{"disable-3", "disable-1"}, refs(second))
		require.Nil(t, b.Take(false), "the last enable batch is open and not due")
		last := b.Take(true)
		require.Equal(t, []any{"enable-1b"}, refs(last))
	})
	t.Run("per_action_limits_apply", func(t *testing.T) {
		b, err := batch.New(batch.Config{Default: 5, MaxDevices: map[string]int{"suspend": 2}})
		require.NoError(t, err)
		suspend := batch.Key{Action: "suspend", Account: "A"}
		for i := range 3 {
			b.Add(suspend, batch.Item{Device: dev(i)})
		}
		require.Len(t, b.Take(false).Devices, 2)
	})
	t.Run("drain_returns_everything_sealed_first", func(t *testing.T) {
		b, _ := newBatcher(t, 2, time.Hour)
		b.Add(enable, batch.Item{Device: dev(1)})
		b.Add(disable, batch.Item{Device: dev(2)})
		b.Add(disable, batch.Item{Device: dev(3)}) // full: sealed
		all := b.Drain()
		require.Len(t, all, 2)
		require.Equal(t, "disable", all[0].Key.Action)
		require.Zero(t, b.Items())
	})
}

func TestConfigRefusesSizesThingSpaceRefuses(t *testing.T) {
	for _, n := range []int{0, 10001} {
		_, err := batch.New(batch.Config{Default: n})
		require.ErrorContains(t, err, "BATCH_MAX_DEVICES")
	}
	_, err := batch.New(batch.Config{Default: 10, MaxDevices: map[string]int{"enable": 20000}})
	require.ErrorContains(t, err, "enable")
}

func refs(g *batch.Batch) []any {
	out := make([]any, len(g.Items))
	for i, it := range g.Items {
		out[i] = it.Ref
	}
	return out
}

func TestRemoveKeepsTheDevicesOtherItemsStillAskFor(t *testing.T) {
	b, _ := newBatcher(t, 10, time.Second)
	b.Add(enable, batch.Item{Device: dev(1), Ref: "c1"})
	b.Add(enable, batch.Item{Device: dev(2), Ref: "c1"})
	b.Add(enable, batch.Item{Device: dev(2), Ref: "c2"})
	b.Add(enable, batch.Item{Device: dev(3), Ref: "c2"})
	g := b.Take(true)
	require.Nil(t, g.Remove(func(batch.Item) bool { return false }))

	out := g.Remove(func(it batch.Item) bool { return it.Ref == "c2" })
	require.Equal(t, []batch.Item{{Device: dev(2), Ref: "c2"}, {Device: dev(3), Ref: "c2"}}, out)
	require.Equal(t, []batch.Item{{Device: dev(1), Ref: "c1"}, {Device: dev(2), Ref: "c1"}}, g.Items)
	require.Equal(t, []device.Set{dev(1), dev(2)}, g.Devices, "device 2 stays: command c1 asks for it too")

	g.Remove(func(batch.Item) bool { return true })
	require.Empty(t, g.Items)
	require.Empty(t, g.Devices)
}

func TestBatcherRemoveTakesItemsOutOfEveryBatch(t *testing.T) {
	b, _ := newBatcher(t, 2, time.Second)
	b.Add(enable, batch.Item{Device: dev(1), Ref: "a"})
	b.Add(enable, batch.Item{Device: dev(2), Ref: "b"}) // full: sealed
	b.Add(disable, batch.Item{Device: dev(1), Ref: "c"})
	b.Add(enable, batch.Item{Device: dev(3), Ref: "d"}) // open
	require.Equal(t, 4, b.Items())

	out := b.Remove(func(it batch.Item) bool { return it.Device == dev(1) })
	require.Equal(t, []batch.Keyed{{Key: enable, Item: batch.Item{Device: dev(1), Ref: "a"}}, {Key: disable, Item: batch.Item{Device: dev(1), Ref: "c"}}}, out)
	require.Equal(t, 2, b.Items())
	// The disable batch is gone; device 1 asked for again opens a new one.
	b.Add(disable, batch.Item{Device: dev(1), Ref: "e"})
	var got [][]any
	for g := b.Take(true); g != nil; g = b.Take(true) {
		var refs []any
		for _, it := range g.Items {
			refs = append(refs, it.Ref)
		}
		got = append(got, refs)
	}
	require.Equal(t, [][]any{{"b"}, {"d"}, {"e"}}, got)
}
