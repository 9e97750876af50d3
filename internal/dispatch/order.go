package dispatch

import (
	"cmp"
	"context"
	"maps"
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
// So a hand-back fences its devices: while a device has a command out, its
// later commands' items are parked here instead of being sent (when they
// come in, or when the batch they wait in is taken). When the command comes
// back and is taken for its call, its fence lifts, and the parked items no
// fence holds any more go back into the batcher behind it, together with
// the device's items still waiting there, in stream order. Parked commands
// stay held (kept alive, handed back at a stop); nothing about them is
// acknowledged.

// fence is one command of a device handed back for a later delivery.
type fence struct {
	seq   uint64    // stream sequence of the command handed back
	since time.Time // for fenceTTL
}

// parkedItem is one device of a later command, waiting for its fences.
type parkedItem struct {
	key batch.Key
	it  batch.Item
}

func seqOf(it batch.Item) uint64 { return it.Ref.(*pending).seq }

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

// fenceDevices fences devices for p, unless p will not come back.
func (s *Service) fenceDevices(devices []command.Device, p *pending) {
	if p.last {
		return
	}
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, d := range devices {
		s.fenceLocked(d.IDs.Key(), p.seq, now)
	}
}

// findFence is where the fence of the command at seq is in fs (sorted by
// seq), or would go, and whether it is there.
func findFence(fs []fence, seq uint64) (int, bool) {
	return slices.BinarySearchFunc(fs, seq, func(f fence, seq uint64) int { return cmp.Compare(f.seq, seq) })
}

// fenceLocked records that the device's command at seq is out.
func (s *Service) fenceLocked(dev string, seq uint64, now time.Time) {
	fs := s.fences[dev]
	i, found := findFence(fs, seq)
	if found {
		return
	}
	s.fences[dev] = slices.Insert(fs, i, fence{seq: seq, since: now})
}

// blockedLocked reports whether an item of the command at seq must wait: an
// earlier command of its device is out.
func (s *Service) blockedLocked(dev string, seq uint64) bool {
	fs := s.fences[dev]
	return len(fs) > 0 && fs[0].seq < seq
}

// liftLocked lifts the device's fence for the command at seq and reports
// whether it had one.
func (s *Service) liftLocked(dev string, seq uint64) bool {
	fs := s.fences[dev]
	i, found := findFence(fs, seq)
	if !found {
		return false
	}
	if fs = slices.Delete(fs, i, i+1); len(fs) == 0 {
		delete(s.fences, dev)
	} else {
		s.fences[dev] = fs
	}
	return true
}

// addLocked puts an item of a command just taken in into the batcher, or
// parks it while an earlier command of its device is out.
func (s *Service) addLocked(k batch.Key, it batch.Item) {
	if len(s.fences) > 0 && s.blockedLocked(it.Device.Key(), seqOf(it)) {
		s.parkLocked(k, it)
		return
	}
	s.batcher.Add(k, it)
}

// parkLocked sets it (of a batch of key k) aside until its fences lift.
func (s *Service) parkLocked(k batch.Key, it batch.Item) {
	s.parked = append(s.parked, parkedItem{key: k, it: it})
	s.m.parked.Set(float64(len(s.parked)))
}

// takeLocked prepares b, just taken from the batcher, for its call: the
// items an earlier command out holds back are parked; the items of the
// earliest command out of their device lift its fence (it leaves now), and
// what that frees goes back into the batcher, behind b. A later item of
// the same device in b is parked even if only that command held it back:
// another command of the device may lie between them, parked or waiting.
func (s *Service) takeLocked(b *batch.Batch) {
	if len(s.fences) == 0 {
		return
	}
	out := b.Remove(func(it batch.Item) bool { return s.blockedLocked(it.Device.Key(), seqOf(it)) })
	for _, it := range out {
		s.parkLocked(b.Key, it)
	}
	if len(out) > 0 {
		s.log.Debug().Int(observability.FieldDevices, len(out)).Str(observability.FieldAction, b.Key.Action).
			Msg("devices wait for an earlier command handed back")
	}
	lifted := map[string]bool{}
	for _, it := range b.Items {
		if dk := it.Device.Key(); s.liftLocked(dk, seqOf(it)) {
			lifted[dk] = true
		}
	}
	if len(lifted) > 0 {
		s.unparkLocked(lifted)
	}
}

// liftDone lifts the fences of the command at seq on the devices it no
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
	lifted := map[string]bool{}
	for _, d := range all {
		if k := d.IDs.Key(); !still[k] && s.liftLocked(k, seq) {
			lifted[k] = true
		}
	}
	back := len(lifted) > 0 && s.unparkLocked(lifted)
	s.mu.Unlock()
	if back {
		s.wakeUp()
	}
}

// liftWhere lifts every fence lift picks, and wakes the send loop if that
// freed parked items; it returns how many it lifted.
func (s *Service) liftWhere(lift func(fence) bool) int {
	s.mu.Lock()
	n := 0
	lifted := map[string]bool{}
	for k, fs := range s.fences {
		before := len(fs)
		kept := slices.DeleteFunc(fs, lift)
		if len(kept) == before {
			continue
		}
		n += before - len(kept)
		lifted[k] = true
		if len(kept) == 0 {
			delete(s.fences, k)
		} else {
			s.fences[k] = kept
		}
	}
	back := n > 0 && s.unparkLocked(lifted)
	s.mu.Unlock()
	if back {
		s.wakeUp()
	}
	return n
}

// expireFences lifts fences older than fenceTTL: their commands are not
// coming back to this dispatcher.
func (s *Service) expireFences(now time.Time) {
	ttl := s.fenceTTL()
	if n := s.liftWhere(func(f fence) bool { return now.Sub(f.since) >= ttl }); n > 0 {
		s.log.Warn().Int("fences", n).Dur("waited", ttl).
			Msg("commands handed back did not come back; the devices' later commands go on")
	}
}

// liftAcked lifts the fences of commands at or below the consumer's ack
// floor (another dispatcher finished them) and forgets this one's acks
// below it.
func (s *Service) liftAcked(floor uint64) {
	s.liftWhere(func(f fence) bool { return f.seq <= floor })
	s.mu.Lock()
	for seq := range s.acked {
		if seq <= floor {
			delete(s.acked, seq)
		}
	}
	s.mu.Unlock()
}

// unparkLocked puts the parked items no fence holds back into the batcher,
// with the items of their devices still waiting there, all in stream order:
// a parked item is older than any item of its device that came in after it
// was parked. The items in the batcher of the devices lifted (whose fences
// just lifted) are put in stream order too: a command that came back may
// wait behind a later one of its device that came in before its fence.
// Items of a command finished meanwhile (handed back whole) are dropped:
// its redelivery brings them.
func (s *Service) unparkLocked(lifted map[string]bool) bool {
	var free []batch.Keyed
	devs := maps.Clone(lifted)
	if devs == nil {
		devs = map[string]bool{}
	}
	kept := s.parked[:0]
	for _, pi := range s.parked {
		dk := pi.it.Device.Key()
		if s.blockedLocked(dk, seqOf(pi.it)) {
			kept = append(kept, pi)
			continue
		}
		if !pi.it.Ref.(*pending).finished.Load() {
			free = append(free, batch.Keyed{Key: pi.key, Item: pi.it})
			devs[dk] = true
		}
	}
	clear(s.parked[len(kept):])
	s.parked = kept
	s.m.parked.Set(float64(len(s.parked)))
	if len(devs) == 0 {
		return false
	}
	free = append(free, s.batcher.Remove(func(it batch.Item) bool { return devs[it.Device.Key()] })...)
	slices.SortStableFunc(free, func(a, b batch.Keyed) int { return cmp.Compare(seqOf(a.Item), seqOf(b.Item)) })
	for _, k := range free {
		s.batcher.Add(k.Key, k.Item)
	}
	return len(free) > 0
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
// commands below it that the consumer has not seen acknowledged (and this
// dispatcher did not acknowledge itself) are read from the stream and fence
// their devices, as a hand-back does. A fence lifts when its command is
// sent from here, when the consumer's ack floor passes it (the other
// dispatcher finished it), or after fenceTTL.

// maxUnackedRead bounds the commands read below a command that comes in
// with none held.
const maxUnackedRead = 100_000

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
	defer func() {
		dctx, dcancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		_ = s.js.DeleteConsumer(dctx, broker.CommandStream, oc.CachedInfo().Name)
		dcancel()
	}()
	now := time.Now()
	read, commands, devices := 0, 0, 0
	for done := false; !done && ctx.Err() == nil && read < maxUnackedRead; {
		msgs, err := oc.Fetch(1000, jetstream.FetchMaxWait(time.Second))
		if err != nil {
			break
		}
		got := 0
		for m := range msgs.Messages() {
			got++
			meta, err := m.Metadata()
			if err != nil || meta.Sequence.Stream >= seq {
				done = true
				continue
			}
			read++
			s.mu.Lock()
			_, mine := s.acked[meta.Sequence.Stream]
			s.mu.Unlock()
			if mine {
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
		if got == 0 || msgs.Error() != nil {
			break
		}
	}
	if commands > 0 {
		s.log.Info().Int("commands", commands).Int(observability.FieldDevices, devices).Uint64("ack_floor", floor).
			Uint64("stream_seq", seq).Msg("commands below this one not acknowledged: their devices' later commands wait for them")
	}
	if read >= maxUnackedRead || ctx.Err() != nil {
		s.log.Warn().Int("read", read).Uint64("ack_floor", floor).Uint64("stream_seq", seq).
			Msg("not every command below this one was read; order across the takeover is not guaranteed for the rest")
	}
}
