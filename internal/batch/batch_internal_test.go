package batch

import (
	"math/rand"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/esim-pipeline/thingspace-esim/internal/device"
)

// check fails t unless b's bookkeeping agrees with its batches: the item
// count, open batches keyed and in order, a device in one open batch at
// most and where pointing at it, where never naming a batch without the
// device.
func (b *Batcher) check(t *testing.T) {
	t.Helper()
	n := 0
	inOrder := map[*Batch]bool{}
	for _, g := range b.order {
		if g.sealed || b.open[g.Key] != g || len(g.Items) == 0 {
			t.Fatalf("bad open batch %+v", g)
		}
		inOrder[g] = true
		n += len(g.Items)
	}
	if len(b.open) != len(b.order) {
		t.Fatalf("open %d order %d", len(b.open), len(b.order))
	}
	for _, g := range b.sealed {
		if !g.sealed || len(g.Items) == 0 {
			t.Fatalf("bad sealed batch")
		}
		n += len(g.Items)
	}
	if n != b.items {
		t.Fatalf("items %d counted %d", b.items, n)
	}
	// a device is in at most one open batch, and where names it
	openOf := map[string]*Batch{}
	for _, g := range b.order {
		for _, d := range g.Devices {
			if openOf[d.Key()] != nil {
				t.Fatalf("device in two open batches")
			}
			openOf[d.Key()] = g
		}
		if len(g.devs) != len(g.Devices) {
			t.Fatalf("devs")
		}
	}
	for k, g := range openOf {
		if b.where[k] != g {
			t.Fatalf("where of %s not its open batch", k)
		}
	}
	for k, g := range b.where {
		if _, ok := g.devs[k]; !ok {
			t.Fatalf("where points to batch without the device")
		}
	}
}

// Random adds, takes and removals of a device's items (put back in their
// order, as the dispatcher's fences do) keep the batcher's bookkeeping
// whole and every device's items leaving in the order they came.
func TestBatcherStaysWholeUnderRandomAddsTakesAndRemovals(t *testing.T) {
	for seed := int64(0); seed < 1000; seed++ {
		r := rand.New(rand.NewSource(seed))
		now := time.Unix(0, 0)
		b, _ := New(Config{Default: 1 + r.Intn(4), MaxWait: time.Second, Now: func() time.Time { return now }})
		keys := []Key{{Action: "a"}, {Action: "b"}, {Action: "c"}}
		seq := 0
		last := map[string]int{}
		for step := 0; step < 200; step++ {
			switch op := r.Intn(10); {
			case op < 5:
				seq++
				d := device.Set{}.With(device.ICCID, "8914800000000000000"+strconv.Itoa(r.Intn(5)))
				b.Add(keys[r.Intn(3)], Item{Device: d, Ref: seq})
			case op < 7:
				now = now.Add(time.Duration(r.Intn(1500)) * time.Millisecond)
				g := b.Take(r.Intn(2) == 0)
				if g != nil {
					for _, it := range g.Items {
						k := it.Device.Key()
						if it.Ref.(int) < last[k] {
							t.Fatalf("seed %d: device %s %d after %d", seed, k, it.Ref, last[k])
						}
						last[k] = it.Ref.(int)
					}
				}
			default:
				dk := device.Set{}.With(device.ICCID, "8914800000000000000"+strconv.Itoa(r.Intn(5))).Key()
				out := b.Remove(func(it Item) bool { return it.Device.Key() == dk })
				slices.SortStableFunc(out, func(x, y Keyed) int { return x.Item.Ref.(int) - y.Item.Ref.(int) })
				for _, k := range out {
					b.Add(k.Key, k.Item)
				}
			}
			b.check(t)
		}
	}
}
