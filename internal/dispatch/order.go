package dispatch

import (
	"cmp"
	"context"
	"slices"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/esim-pipeline/thingspace-esim/internal/batch"
	"github.com/esim-pipeline/thingspace-esim/internal/broker"
	"github.com/esim-pipeline/thingspace-esim/internal/command"
	"github.com/esim-pipeline/thingspace-esim/internal/device"
	"github.com/esim-pipeline/thingspace-esim/internal/observability"
)

// One device's commands reach ThingSpace in publish order. The batcher keeps
// that order among the commands it holds; a command handed back for a later
// delivery (its call failed, or its outcome could not be stored) leaves it,
// and the commands behind it that name the same device must not go first.
// So a hand-back fences its devices: until the command comes back (is taken
// in again), a later command's item for a fenced device is parked here
// instead of being sent, and goes back into the batcher, behind the
// returned command, once the fence is lifted. Parked commands stay held
// (kept alive, handed back at a stop); nothing about them is acknowledged.

// fence is a device's command handed back for a later delivery.
type fence struct {
	seq   uint64    // stream sequence of the command handed back
	since time.Time // for fenceTTL
}

// parkedItem is one device of a later command, waiting for its fence.
type parkedItem struct {
	key batch.Key
	it  batch.Item
}

// fenceTTL is how long a fence may wait for its command to come back
// before the commands behind it go anyway (the command may have gone to
// another dispatcher, or out of the stream).
func (s *Service) fenceTTL() time.Duration { return 2*s.cfg.AckWait + 10*time.Second }

// fenceGroup fences the devices of g for the commands of g that will come
// back (those on their last delivery end here, failed).
func (s *Service) fenceGroup(g group) {
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	for dk, its := range g.items {
		for _, it := range its {
			if p := it.Ref.(*pending); !p.last {
				s.fenceLocked(dk, p.seq, now)
			}
		}
	}
}

// fenceDevices fences devices for the command at stream sequence seq.
func (s *Service) fenceDevices(devices []command.Device, seq uint64) {
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, d := range devices {
		s.fenceLocked(d.IDs.Key(), seq, now)
	}
}

// fenceLocked: the earliest command handed back for a device is the one
// its later commands wait for.
func (s *Service) fenceLocked(dev string, seq uint64, now time.Time) {
	if f, ok := s.fences[dev]; ok && f.seq <= seq {
		return
	}
	s.fences[dev] = fence{seq: seq, since: now}
}

// parkFencedLocked takes out of b, into the parked items, every item of a
// command later than its device's fence.
func (s *Service) parkFencedLocked(b *batch.Batch) {
	out := b.Remove(func(it batch.Item) bool {
		f, ok := s.fences[it.Device.Key()]
		return ok && it.Ref.(*pending).seq > f.seq
	})
	for _, it := range out {
		s.parked = append(s.parked, parkedItem{key: b.Key, it: it})
	}
	if len(out) > 0 {
		s.m.parked.Set(float64(len(s.parked)))
		s.log.Debug().Int(observability.FieldDevices, len(out)).Str(observability.FieldAction, b.Key.Action).
			Msg("devices wait for an earlier command handed back")
	}
}

// liftLocked lifts the fence a device has for the command at seq and
// reports whether it had one.
func (s *Service) liftLocked(dev string, seq uint64) bool {
	if f, ok := s.fences[dev]; ok && f.seq == seq {
		delete(s.fences, dev)
		return true
	}
	return false
}

// takeLocked prepares b, just taken from the batcher, for its call: the
// items of commands behind a fence are parked; the items of a command that
// a fence waits for lift it (it leaves now), and what that frees goes back
// into the batcher, behind b.
func (s *Service) takeLocked(b *batch.Batch) {
	if len(s.fences) == 0 {
		return
	}
	s.parkFencedLocked(b)
	lifted := false
	for _, it := range b.Items {
		if s.liftLocked(it.Device.Key(), it.Ref.(*pending).seq) {
			lifted = true
		}
	}
	if lifted {
		s.unparkLocked()
	}
}

// liftDone lifts the fences the command at seq set on devices it no
// longer sends (an earlier delivery carried them to ThingSpace), and wakes
// the send loop if that freed parked items.
func (s *Service) liftDone(seq uint64, all, sending []command.Device) {
	if len(sending) == len(all) {
		return
	}
	s.mu.Lock()
	if len(s.fences) == 0 {
		s.mu.Unlock()
		return
	}
	still := make(map[string]bool, len(sending))
	for _, d := range sending {
		still[d.IDs.Key()] = true
	}
	lifted := false
	for _, d := range all {
		if k := d.IDs.Key(); !still[k] && s.liftLocked(k, seq) {
			lifted = true
		}
	}
	back := lifted && s.unparkLocked()
	s.mu.Unlock()
	if back {
		s.wakeUp()
	}
}

// expireFences lifts fences older than fenceTTL (the returned command is
// not coming to this dispatcher) and wakes the send loop for what that
// freed.
func (s *Service) expireFences(now time.Time) {
	s.mu.Lock()
	expired := 0
	for k, f := range s.fences {
		if now.Sub(f.since) >= s.fenceTTL() {
			delete(s.fences, k)
			expired++
		}
	}
	back := expired > 0 && s.unparkLocked()
	s.mu.Unlock()
	if expired > 0 {
		s.log.Warn().Int(observability.FieldDevices, expired).Dur("waited", s.fenceTTL()).
			Msg("commands handed back did not come back; the devices' later commands go on")
	}
	if back {
		s.wakeUp()
	}
}

// unparkLocked puts back into the batcher, in stream order, the parked
// items no fence holds; those of a command finished meanwhile (handed
// back whole) are dropped: its redelivery brings them.
func (s *Service) unparkLocked() bool {
	slices.SortStableFunc(s.parked, func(a, b parkedItem) int {
		return cmp.Compare(a.it.Ref.(*pending).seq, b.it.Ref.(*pending).seq)
	})
	kept := s.parked[:0]
	back := false
	for _, pi := range s.parked {
		p := pi.it.Ref.(*pending)
		if f, ok := s.fences[pi.it.Device.Key()]; ok && p.seq > f.seq {
			kept = append(kept, pi)
			continue
		}
		if !p.finished.Load() {
			s.batcher.Add(pi.key, pi.it)
			back = true
		}
	}
	clear(s.parked[len(kept):])
	s.parked = kept
	s.m.parked.Set(float64(len(s.parked)))
	return back
}

// wakeUp tells the send loop to look at the batcher again.
func (s *Service) wakeUp() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// A dispatcher that takes over (or starts, or had nothing in hand) cannot
// see what another one held: a command the other took and did not finish
// comes back only after its ack wait (or its hand-back, which a NATS node
// going away can lose), and the newer commands this one gets meanwhile
// must not overtake it. So when a command comes with none held here, the
// commands below it that the consumer has not seen acknowledged are read
// from the stream and fence their devices, as a hand-back does. A fence
// lifts when its command is sent from here, when the consumer's ack floor
// passes it (the other dispatcher finished it), or after fenceTTL.

// idle reports whether this dispatcher holds no command.
func (s *Service) idle() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.held) == 0
}

// fenceUnacked fences the devices of the commands below stream sequence seq
// that are not acknowledged. Its own acks sent a moment ago may not be
// counted yet: it looks again for up to half a second before reading.
func (s *Service) fenceUnacked(ctx context.Context, seq uint64) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var floor uint64
	for try := 0; ; try++ {
		info, err := s.cons.Info(ctx)
		if err != nil {
			s.log.Debug().Err(err).Msg("consumer info for commands not acknowledged")
			return
		}
		floor = info.AckFloor.Stream
		if floor+1 >= seq {
			return
		}
		if try >= 10 || time.Since(time.Unix(0, s.lastAck.Load())) > time.Second {
			break
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(50 * time.Millisecond):
		}
	}
	oc, err := s.js.OrderedConsumer(ctx, broker.CommandStream, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{broker.CommandSubjects},
		DeliverPolicy:  jetstream.DeliverByStartSequencePolicy,
		OptStartSeq:    floor + 1,
	})
	if err != nil {
		s.log.Warn().Err(err).Msg("commands not acknowledged cannot be read; their devices are not fenced")
		return
	}
	now := time.Now()
	commands, devices := 0, 0
	for done := false; !done; {
		batch, err := oc.Fetch(1000, jetstream.FetchMaxWait(time.Second))
		if err != nil {
			break
		}
		got := 0
		for m := range batch.Messages() {
			got++
			meta, err := m.Metadata()
			if err != nil || meta.Sequence.Stream >= seq {
				done = true
				continue
			}
			action, err := command.ActionFromSubject(m.Subject())
			if err != nil {
				continue
			}
			cmd, err := command.Decode(action, m.Data(), device.Options{Checksums: s.cfg.Checksums})
			if err != nil {
				continue
			}
			s.mu.Lock()
			for _, d := range cmd.Devices {
				s.fenceLocked(d.IDs.Key(), meta.Sequence.Stream, now)
			}
			s.mu.Unlock()
			commands++
			devices += len(cmd.Devices)
		}
		if got == 0 || batch.Error() != nil {
			break
		}
	}
	if commands > 0 {
		s.log.Info().Int("commands", commands).Int(observability.FieldDevices, devices).Uint64("ack_floor", floor).
			Uint64("stream_seq", seq).Msg("commands below this one not acknowledged: their devices' later commands wait for them")
	}
}

// liftAcked lifts the fences of commands at or below the consumer's ack
// floor: another dispatcher finished them.
func (s *Service) liftAcked(floor uint64) {
	s.mu.Lock()
	lifted := false
	for k, f := range s.fences {
		if f.seq <= floor {
			delete(s.fences, k)
			lifted = true
		}
	}
	back := lifted && s.unparkLocked()
	s.mu.Unlock()
	if back {
		s.wakeUp()
	}
}
