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

func refs(g *batch.Batch) []any {
	out := make([]any, len(g.Items))
	for i, it := range g.Items {
		out[i] = it.Ref
	}
	return out
}

func TestBatcher(t *testing.T) {
	t.Run("a_full_batch_is_ready_at_once_and_the_rest_waits", func(t *testing.T) {
		b, c := newBatcher(t, 3, time.Second)
		for i := range 4 {
			b.Add(enable, batch.Item{Device: dev(i)})
		}
		k, ok := b.Peek()
		require.True(t, ok)
		require.Equal(t, enable, k)
		require.Len(t, b.Take(k).Items, 3)
		require.False(t, b.Ready(), "the fourth device waits for MaxWait")
		c.t = c.t.Add(time.Second)
		require.True(t, b.Ready())
		require.Len(t, b.Take(enable).Items, 1)
		require.Nil(t, b.Take(enable))
		require.Zero(t, b.Items())
	})
	t.Run("full_batches_leave_before_open_ones_oldest_first", func(t *testing.T) {
		b, c := newBatcher(t, 2, time.Second)
		b.Add(enable, batch.Item{Device: dev(1), Ref: "e1"})
		b.Add(disable, batch.Item{Device: dev(2), Ref: "d2"})
		b.Add(disable, batch.Item{Device: dev(3), Ref: "d3"}) // full
		c.t = c.t.Add(time.Second)
		k, _ := b.Peek()
		require.Equal(t, disable, k, "the full batch first, though the open one is older and due")
		require.Equal(t, []any{"d2", "d3"}, refs(b.Take(k)))
		k, _ = b.Peek()
		require.Equal(t, []any{"e1"}, refs(b.Take(k)))
	})
	t.Run("take_brings_what_came_under_the_key_since_peek", func(t *testing.T) {
		b, c := newBatcher(t, 10, time.Second)
		b.Add(enable, batch.Item{Device: dev(1)})
		c.t = c.t.Add(time.Second)
		k, ok := b.Peek()
		require.True(t, ok)
		b.Add(enable, batch.Item{Device: dev(2)}) // while the caller waited for a rate token
		require.Len(t, b.Take(k).Items, 2)
	})
	t.Run("next_due_is_when_the_oldest_open_batch_has_waited", func(t *testing.T) {
		b, c := newBatcher(t, 10, time.Second)
		require.True(t, b.NextDue().IsZero())
		b.Add(enable, batch.Item{Device: dev(1)})
		require.Equal(t, c.t.Add(time.Second), b.NextDue())
	})
	t.Run("per_action_limits_apply", func(t *testing.T) {
		b, err := batch.New(batch.Config{Default: 5, MaxDevices: map[string]int{"suspend": 2}})
		require.NoError(t, err)
		suspend := batch.Key{Action: "suspend", Account: "A"}
		for i := range 3 {
			b.Add(suspend, batch.Item{Device: dev(i)})
		}
		require.Len(t, b.Take(suspend).Items, 2)
	})
	t.Run("drain_returns_everything_full_first", func(t *testing.T) {
		b, _ := newBatcher(t, 2, time.Hour)
		b.Add(enable, batch.Item{Device: dev(1)})
		b.Add(disable, batch.Item{Device: dev(2)})
		b.Add(disable, batch.Item{Device: dev(3)}) // full: sealed
		all := b.Drain()
		require.Len(t, all, 2)
		require.Equal(t, "disable", all[0].Key.Action)
		require.Zero(t, b.Items())
		require.False(t, b.Ready())
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
