package batch

import (
	"fmt"
	"time"

	"github.com/esim-pipeline/thingspace-esim/internal/device"
)

// MaxDevices is ThingSpace's limit on devices in one call.
const MaxDevices = 10000

// Key groups what may share one ThingSpace call.
type Key struct {
	Action  string
	Account string
	Options string // canonical call options (smsrOid, servicePlan, etfWaiver, reasonCode)
}

// Item is one device asked for by one command.
type Item struct {
	Device device.Set
	// Ref is the caller's handle on the command, returned untouched.
	Ref any
}

// Batch is the devices of one ThingSpace call.
type Batch struct {
	Key    Key
	Opened time.Time
	// Items in arrival order; the same device may appear more than once
	// (asked for by several commands), it is sent once.
	Items []Item
	devs  map[string]int // device key -> index in Devices
	// Devices are the distinct devices to send, in arrival order.
	Devices []device.Set
	sealed  bool
}

// Full reports whether the batch reached its size limit.
func (b *Batch) Full(max int) bool { return len(b.Devices) >= max }

func (b *Batch) add(it Item) {
	k := it.Device.Key()
	if _, ok := b.devs[k]; !ok {
		b.devs[k] = len(b.Devices)
		b.Devices = append(b.Devices, it.Device)
	}
	b.Items = append(b.Items, it)
}

// Config sets a batcher's limits.
type Config struct {
	// MaxDevices is the size limit of a call per action; Default applies to
	// actions not named. Never above 10,000.
	MaxDevices map[string]int
	Default    int
	// MaxWait is how long an open batch may wait to fill.
	MaxWait time.Duration
	// Now is the clock (time.Now by default).
	Now func() time.Time
}

// Validate reports limits ThingSpace would refuse.
func (c Config) Validate() error {
	if c.Default < 1 || c.Default > MaxDevices {
		return fmt.Errorf("BATCH_MAX_DEVICES: %d is out of range 1..%d", c.Default, MaxDevices)
	}
	for a, n := range c.MaxDevices {
		if n < 1 || n > MaxDevices {
			return fmt.Errorf("batch size for %s: %d is out of range 1..%d", a, n, MaxDevices)
		}
	}
	if c.MaxWait < 0 {
		return fmt.Errorf("BATCH_MAX_WAIT: %s is negative", c.MaxWait)
	}
	return nil
}

// Batcher merges items into batches. Not safe for concurrent use.
type Batcher struct {
	cfg    Config
	open   map[Key]*Batch
	order  []*Batch // open batches, oldest first
	sealed []*Batch // sealed batches, in sealing order
	where  map[string]*Batch
	items  int
}

// New returns an empty batcher.
func New(cfg Config) (*Batcher, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Batcher{cfg: cfg, open: map[Key]*Batch{}, where: map[string]*Batch{}}, nil
}

// Max is the size limit for action.
func (b *Batcher) Max(action string) int {
	if n, ok := b.cfg.MaxDevices[action]; ok {
		return n
	}
	return b.cfg.Default
}

// Add puts it into the open batch of k.
func (b *Batcher) Add(k Key, it Item) {
	dk := it.Device.Key()
	if prev := b.where[dk]; prev != nil && !prev.sealed && prev.Key != k {
		// The device waits in another batch: that one must leave first.
		b.seal(prev)
	}
	g := b.open[k]
	if g == nil {
		g = &Batch{Key: k, Opened: b.cfg.Now(), devs: map[string]int{}}
		b.open[k] = g
		b.order = append(b.order, g)
	}
	g.add(it)
	b.where[dk] = g
	b.items++
	if g.Full(b.Max(k.Action)) {
		b.seal(g)
	}
}

func (b *Batcher) seal(g *Batch) {
	if g.sealed {
		return
	}
	g.sealed = true
	delete(b.open, g.Key)
	for i, o := range b.order {
		if o == g {
			b.order = append(b.order[:i], b.order[i+1:]...)
			break
		}
	}
	b.sealed = append(b.sealed, g)
}

// Ready reports whether a batch may leave now: a sealed one, or an open one
// that has waited MaxWait.
func (b *Batcher) Ready() bool {
	if len(b.sealed) > 0 {
		return true
	}
	return len(b.order) > 0 && !b.cfg.Now().Before(b.order[0].Opened.Add(b.cfg.MaxWait))
}

// NextDue is when the oldest open batch becomes due; zero when there is none.
func (b *Batcher) NextDue() time.Time {
	if len(b.sealed) > 0 {
		return b.cfg.Now()
	}
	if len(b.order) == 0 {
		return time.Time{}
	}
	return b.order[0].Opened.Add(b.cfg.MaxWait)
}

// Take removes and returns the next batch to send: the oldest sealed one,
// else the oldest open one if it is due (force takes it even before).
func (b *Batcher) Take(force bool) *Batch {
	var g *Batch
	switch {
	case len(b.sealed) > 0:
		g = b.sealed[0]
		b.sealed = b.sealed[1:]
	case len(b.order) > 0 && (force || b.Ready()):
		g = b.order[0]
		b.seal(g)
		b.sealed = b.sealed[:len(b.sealed)-1]
	default:
		return nil
	}
	for _, d := range g.Devices {
		if b.where[d.Key()] == g {
			delete(b.where, d.Key())
		}
	}
	b.items -= len(g.Items)
	return g
}

// Peek returns the key of the batch Take would return, and false when
// there is none ready.
func (b *Batcher) Peek() (Key, bool) {
	switch {
	case len(b.sealed) > 0:
		return b.sealed[0].Key, true
	case len(b.order) > 0 && b.Ready():
		return b.order[0].Key, true
	}
	return Key{}, false
}

// Drain removes and returns every batch, sealed first.
func (b *Batcher) Drain() []*Batch {
	var out []*Batch
	for g := b.Take(true); g != nil; g = b.Take(true) {
		out = append(out, g)
	}
	return out
}

// Items counts the items waiting.
func (b *Batcher) Items() int { return b.items }

// Remove takes the items drop picks out of b (a batch already taken), with
// the devices no remaining item asks for, and returns them in their order.
func (b *Batch) Remove(drop func(Item) bool) []Item {
	var out []Item
	kept := b.Items[:0]
	for _, it := range b.Items {
		if drop(it) {
			out = append(out, it)
		} else {
			kept = append(kept, it)
		}
	}
	if len(out) == 0 {
		return nil
	}
	clear(b.Items[len(kept):])
	b.Items = kept
	asked := make(map[string]bool, len(kept))
	for _, it := range kept {
		asked[it.Device.Key()] = true
	}
	devs := b.Devices[:0]
	b.devs = make(map[string]int, len(asked))
	for _, d := range b.Devices {
		if k := d.Key(); asked[k] {
			b.devs[k] = len(devs)
			devs = append(devs, d)
		}
	}
	clear(b.Devices[len(devs):])
	b.Devices = devs
	return out
}

// Keyed is an item with the key of the batch it waited in.
type Keyed struct {
	Key  Key
	Item Item
}

// Remove takes the items drop picks out of every batch waiting, sealed
// ones first, each batch's in its order, and drops the batches it leaves
// empty.
func (b *Batcher) Remove(drop func(Item) bool) []Keyed {
	var out []Keyed
	emptied := func(g *Batch) bool {
		its := g.Remove(drop)
		for _, it := range its {
			out = append(out, Keyed{Key: g.Key, Item: it})
			k := it.Device.Key()
			if _, still := g.devs[k]; !still && b.where[k] == g {
				delete(b.where, k)
			}
		}
		b.items -= len(its)
		return len(g.Items) == 0
	}
	sealed := b.sealed[:0]
	for _, g := range b.sealed {
		if !emptied(g) {
			sealed = append(sealed, g)
		}
	}
	clear(b.sealed[len(sealed):])
	b.sealed = sealed
	order := b.order[:0]
	for _, g := range b.order {
		if emptied(g) {
			delete(b.open, g.Key)
		} else {
			order = append(order, g)
		}
	}
	clear(b.order[len(order):])
	b.order = order
	return out
}
