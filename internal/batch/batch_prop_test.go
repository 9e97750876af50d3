package batch_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"pgregory.net/rapid"

	"github.com/esim-pipeline/thingspace-esim/internal/batch"
)

// TestEveryItemLeavesOnceInItsKeysOrderWithinTheLimits drives a batcher
// with random adds, clock steps, peeks and takes: every item added leaves
// exactly once, in one batch of its own key, in the order it was added
// under that key; no batch is over its limit; the count of items waiting is
// always right.
func TestEveryItemLeavesOnceInItsKeysOrderWithinTheLimits(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		now := time.Unix(0, 0)
		max := rapid.IntRange(1, 5).Draw(t, "max")
		b, err := batch.New(batch.Config{Default: max, MaxWait: time.Second, Now: func() time.Time { return now }})
		require.NoError(t, err)
		keys := []batch.Key{{Action: "enable"}, {Action: "disable"}, {Action: "enable", Account: "B"}}
		added := map[batch.Key][]int{}
		left := map[batch.Key][]int{}
		waiting, next := 0, 0
		take := func(g *batch.Batch) {
			if g == nil {
				return
			}
			require.NotEmpty(t, g.Items)
			require.LessOrEqual(t, len(g.Items), max)
			for _, it := range g.Items {
				left[g.Key] = append(left[g.Key], it.Ref.(int))
			}
			waiting -= len(g.Items)
		}
		for range rapid.IntRange(0, 200).Draw(t, "steps") {
			switch rapid.IntRange(0, 4).Draw(t, "op") {
			case 0, 1:
				k := rapid.SampledFrom(keys).Draw(t, "key")
				b.Add(k, batch.Item{Device: dev(next), Ref: next})
				added[k] = append(added[k], next)
				next++
				waiting++
			case 2:
				now = now.Add(time.Duration(rapid.IntRange(0, 1500).Draw(t, "ms")) * time.Millisecond)
			case 3:
				if k, ok := b.Peek(); ok {
					take(b.Take(k))
				}
			case 4:
				take(b.Take(rapid.SampledFrom(keys).Draw(t, "any key")))
			}
			require.Equal(t, waiting, b.Items())
		}
		for _, g := range b.Drain() {
			take(g)
		}
		require.Zero(t, b.Items())
		require.Equal(t, added, left)
	})
}
