package batch

import (
	"fmt"
	"slices"
	"time"

	"github.com/esim-pipeline/thingspace-esim/internal/command"
	"github.com/esim-pipeline/thingspace-esim/internal/device"
)

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

// Batch is the devices of one ThingSpace call, in arrival order.
type Batch struct {
	Key    Key
	Opened time.Time
	Items  []Item
}

// Devices are the batch's devices, in its order.
func (b *Batch) Devices() []device.Set {
	out := make([]device.Set, len(b.Items))
	for i, it := range b.Items {
		out[i] = it.Device
	}
	return out
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
	if c.Default < 1 || c.Default > command.MaxDevices {
		return fmt.Errorf("BATCH_MAX_DEVICES: %d is out of range 1..%d", c.Default, command.MaxDevices)
	}
	for a, n := range c.MaxDevices {
		if n < 1 || n > command.MaxDevices {
			return fmt.Errorf("batch size for %s: %d is out of range 1..%d", a, n, command.MaxDevices)
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
	sealed []*Batch // full batches, in sealing order
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
	return &Batcher{cfg: cfg, open: map[Key]*Batch{}}, nil
}

// Max is the size limit for action.
func (b *Batcher) Max(action string) int {
	if n, ok := b.cfg.MaxDevices[action]; ok {
		return n
	}
	return b.cfg.Default
}

// Add puts it into the open batch of k; a batch that is full is sealed.
// The caller adds a device at most once at a time.
func (b *Batcher) Add(k Key, it Item) {
	g := b.open[k]
	if g == nil {
		g = &Batch{Key: k, Opened: b.cfg.Now()}
		b.open[k] = g
		b.order = append(b.order, g)
	}
	g.Items = append(g.Items, it)
	b.items++
	if len(g.Items) >= b.Max(k.Action) {
		b.closeOpen(g)
		b.sealed = append(b.sealed, g)
	}
}

func (b *Batcher) closeOpen(g *Batch) {
	delete(b.open, g.Key)
	if i := slices.Index(b.order, g); i >= 0 {
		b.order = slices.Delete(b.order, i, i+1)
	}
}

// Ready reports whether a batch may leave now: a full one, or an open one
// that has waited MaxWait.
func (b *Batcher) Ready() bool {
	_, ok := b.Peek()
	return ok
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

// Peek returns the key of the batch that should leave next: the oldest
// full one, else the oldest open one once it is due; false when none is.
func (b *Batcher) Peek() (Key, bool) {
	switch {
	case len(b.sealed) > 0:
		return b.sealed[0].Key, true
	case len(b.order) > 0 && !b.cfg.Now().Before(b.order[0].Opened.Add(b.cfg.MaxWait)):
		return b.order[0].Key, true
	}
	return Key{}, false
}

// Take removes and returns the oldest batch of key k, full ones first;
// nil when k has none. Peek says which key is due; what was added under it
// since goes along.
func (b *Batcher) Take(k Key) *Batch {
	var g *Batch
	if i := slices.IndexFunc(b.sealed, func(g *Batch) bool { return g.Key == k }); i >= 0 {
		g = b.sealed[i]
		b.sealed = slices.Delete(b.sealed, i, i+1)
	} else if g = b.open[k]; g != nil {
		b.closeOpen(g)
	} else {
		return nil
	}
	b.items -= len(g.Items)
	return g
}

// Drain removes and returns every batch, full ones first.
func (b *Batcher) Drain() []*Batch {
	out := append(b.sealed, b.order...)
	b.sealed, b.order, b.open, b.items = nil, nil, map[Key]*Batch{}, 0
	return out
}

// Items counts the items waiting.
func (b *Batcher) Items() int { return b.items }
