package esimctl

import (
	"fmt"
	"io"
	"math"
	"sync"
	"time"

	"github.com/vbauerster/mpb/v8"
	"github.com/vbauerster/mpb/v8/decor"
)

// reporter shows a run's progress while it is followed. Its methods are
// called from the following loop only.
type reporter interface {
	// interval is how often tick is called.
	interval() time.Duration
	start(t *Tally)
	// update follows an event.
	update(t *Tally)
	tick(t *Tally)
	// stop ends the display; done says every device is final.
	stop(t *Tally, done bool)
}

// meter measures devices becoming final per second over a sliding window,
// so a replay of old events does not inflate the rate for long.
type meter struct {
	window  time.Duration
	now     func() time.Time
	samples []sample
}

type sample struct {
	at    time.Time
	final int
}

func (m *meter) add(final int) {
	now := m.now()
	m.samples = append(m.samples, sample{now, final})
	cut := 0
	for cut < len(m.samples)-2 && now.Sub(m.samples[cut+1].at) >= m.window {
		cut++
	}
	m.samples = m.samples[cut:]
}

// sample records final now; within a quarter second of the last sample it
// updates that one instead, so a burst of events keeps the window small and
// the rate current.
func (m *meter) sample(final int) {
	if n := len(m.samples); n > 1 && m.now().Sub(m.samples[n-1].at) < 250*time.Millisecond {
		m.samples[n-1].final = final
		return
	}
	m.add(final)
}

// rate is devices per second; 0 when unknown.
func (m *meter) rate() float64 {
	if len(m.samples) < 2 {
		return 0
	}
	a, b := m.samples[0], m.samples[len(m.samples)-1]
	dt := b.at.Sub(a.at).Seconds()
	if dt <= 0 {
		return 0
	}
	return float64(b.final-a.final) / dt
}

// line words the progress: "1500/2500 final (…) · 250 devices/s · about 4s left".
func progressLine(t *Tally, rate float64) string {
	s := fmt.Sprintf("%d/%d final (%s)", t.Final(), t.Total(), t.Summary())
	if t.Done() {
		return s
	}
	s += fmt.Sprintf(" · %.0f devices/s", rate)
	if rate > 0 {
		left := time.Duration(math.Ceil(float64(t.Total()-t.Final())/rate)) * time.Second
		s += " · about " + left.String() + " left"
	} else {
		s += " · time left unknown"
	}
	return s
}

// plain prints one line every interval: for logs and pipes.
type plain struct {
	w     io.Writer
	run   string
	every time.Duration
	m     meter
}

func newPlain(w io.Writer, run string, every time.Duration) *plain {
	return &plain{w: w, run: run, every: every, m: meter{window: 30 * time.Second, now: time.Now}}
}

func (p *plain) interval() time.Duration { return p.every }
func (p *plain) start(t *Tally)          { p.m.add(t.Final()) }
func (p *plain) update(t *Tally)         { p.m.sample(t.Final()) }
func (p *plain) tick(t *Tally) {
	p.m.add(t.Final())
	fmt.Fprintf(p.w, "run %s: %s\n", p.run, progressLine(t, p.m.rate()))
}
func (p *plain) stop(*Tally, bool) {}

// bar is a live progress bar on a terminal.
type bar struct {
	p   *mpb.Progress
	b   *mpb.Bar
	m   meter
	mu  sync.Mutex
	txt string
}

func newBar(w io.Writer, run string, total int) *bar {
	r := &bar{m: meter{window: 30 * time.Second, now: time.Now}}
	r.p = mpb.New(mpb.WithOutput(w), mpb.WithWidth(40), mpb.WithRefreshRate(200*time.Millisecond))
	r.b = r.p.AddBar(int64(total),
		mpb.PrependDecorators(
			decor.Name("run "+run+" ", decor.WCSyncSpaceR),
			decor.CountersNoUnit("%d/%d final", decor.WCSyncWidth),
		),
		mpb.AppendDecorators(
			decor.Percentage(decor.WC{W: 5}),
			decor.Any(func(decor.Statistics) string {
				r.mu.Lock()
				defer r.mu.Unlock()
				return " " + r.txt
			}),
		),
	)
	return r
}

func (r *bar) interval() time.Duration { return time.Second }
func (r *bar) start(t *Tally)          { r.m.add(t.Final()); r.refresh(t) }
func (r *bar) update(t *Tally) {
	r.m.sample(t.Final())
	r.b.SetCurrent(int64(t.Final()))
	r.setText(t)
}
func (r *bar) tick(t *Tally) { r.m.add(t.Final()); r.refresh(t) }

func (r *bar) refresh(t *Tally) {
	r.b.SetCurrent(int64(t.Final()))
	r.setText(t)
}

func (r *bar) setText(t *Tally) {
	s := t.Summary()
	if !t.Done() {
		rate := r.m.rate()
		s += fmt.Sprintf(" · %.0f devices/s", rate)
		if rate > 0 {
			s += " · " + (time.Duration(math.Ceil(float64(t.Total()-t.Final())/rate)) * time.Second).String() + " left"
		}
	}
	r.mu.Lock()
	r.txt = s
	r.mu.Unlock()
}

func (r *bar) stop(t *Tally, done bool) {
	r.setText(t)
	if done {
		r.b.SetCurrent(int64(t.Total()))
	} else {
		r.b.Abort(false)
	}
	r.p.Wait()
}
