package dispatch

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/synadia-io/orbit.go/jetstreamext"

	"github.com/esim-pipeline/thingspace-esim/internal/batch"
	"github.com/esim-pipeline/thingspace-esim/internal/broker"
	"github.com/esim-pipeline/thingspace-esim/internal/command"
	"github.com/esim-pipeline/thingspace-esim/internal/device"
	"github.com/esim-pipeline/thingspace-esim/internal/observability"
	"github.com/esim-pipeline/thingspace-esim/internal/order"
	"github.com/esim-pipeline/thingspace-esim/internal/status"
)

// pinHeader is the header nats-server puts on each message it delivers to
// the pinned client: a new value means this dispatcher has just taken the pin.
const pinHeader = "Nats-Pin-Id"

// intake pulls commands until ctx ends, within the session's limits, and
// starts a session whenever the pin is taken and ends it when it is lost.
func (d *dispatcher) intake(ctx context.Context) {
	var s *session
	defer func() {
		if s != nil {
			s.end()
		}
		d.pull.close()
		// What came and was not taken goes back at once, after what was.
		for len(d.pull.msgs) > 0 {
			if m := <-d.pull.msgs; len(m.Data) > 0 {
				_ = m.Nak()
			}
		}
	}()
	keepPin := time.NewTicker(d.cfg.PinnedTTL / 3)
	defer keepPin.Stop()
	tick := time.NewTicker(pull / 4)
	defer tick.Stop()
	keep := false
	for ctx.Err() == nil {
		if now := time.Now(); !d.pull.busy(now) {
			msgs, bytes, wait := 1, 0, false
			if s != nil {
				msgs, bytes, wait = s.pullSize()
			}
			switch {
			case !wait:
				d.ask(msgs, bytes, now)
			case keep:
				d.ask(msgs, bytes, now) // full: a pull that cannot take a message keeps the pin
				keep = false
			}
		}
		var room chan struct{}
		if s != nil {
			room = s.room
		}
		select {
		case <-ctx.Done():
		case <-room:
		case <-keepPin.C:
			keep = true
		case <-tick.C:
		case m := <-d.pull.msgs:
			switch d.pull.read(m) {
			case readPinLost:
				if s != nil {
					d.log.Warn().Msg("the pin went to another dispatcher: handing back what is held")
					s.end()
					s = nil
				}
			case readCommand:
				if pin := m.Header.Get(pinHeader); s == nil || pin != s.pin {
					if s != nil {
						s.end()
					}
					s = d.takeover(ctx, pin)
				}
				s.take(ctx, m)
			}
		}
	}
}

func (d *dispatcher) ask(msgs, bytes int, now time.Time) {
	if err := d.pull.ask(msgs, bytes, now); err != nil {
		d.log.Debug().Err(err).Msg("pull")
	}
}

func pause(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// takeover starts a session for a pin just taken. Another dispatcher may
// hold commands it took and did not finish, or have handed them back: they
// come here later (after its ack wait, or now), and the newer commands that
// come first must not overtake them. So the commands between the consumer's
// ack floor and the last one it delivered are read once, and their devices
// wait for them.
func (d *dispatcher) takeover(ctx context.Context, pin string) *session {
	s := d.newSession(ctx, pin)
	start := time.Now()
	floor, last, n, err := d.readUnacked(ctx, func(seq uint64, devices []string) {
		s.mu.Lock()
		s.book.Learn(seq, devices, start)
		s.mu.Unlock()
	})
	ev := d.log.Info()
	if err != nil {
		ev = d.log.Warn().Err(err)
	}
	ev.Uint64("ack_floor", floor).Uint64("last_delivered", last).Int("read", n).Dur(observability.FieldDuration, time.Since(start)).
		Msg("pin taken: commands delivered before and not acknowledged read")
	d.m.takeovers.Inc()
	return s
}

// maxTakeoverRead bounds the commands a takeover reads.
const maxTakeoverRead = 1_000_000

// readUnacked reads the commands after the consumer's ack floor up to the
// last it delivered, and gives learn each one's devices.
func (d *dispatcher) readUnacked(ctx context.Context, learn func(seq uint64, devices []string)) (floor, last uint64, n int, err error) {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	info, err := d.cons.Info(ctx)
	if err != nil {
		return 0, 0, 0, err
	}
	floor, last = info.AckFloor.Stream, info.Delivered.Stream
	if last <= floor {
		return floor, last, 0, nil
	}
	oc, err := d.js.OrderedConsumer(ctx, broker.CommandStream, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{broker.CommandSubjects},
		DeliverPolicy:  jetstream.DeliverByStartSequencePolicy,
		OptStartSeq:    floor + 1,
	})
	if err != nil {
		return floor, last, 0, err
	}
	defer func() {
		dctx, dcancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		_ = d.js.DeleteConsumer(dctx, broker.CommandStream, oc.CachedInfo().Name)
		dcancel()
	}()
	for n < maxTakeoverRead {
		msgs, err := oc.Fetch(maxPull, jetstream.FetchMaxWait(time.Second))
		if err != nil {
			return floor, last, n, err
		}
		got := 0
		for m := range msgs.Messages() {
			got++
			meta, err := m.Metadata()
			if err != nil {
				continue
			}
			if meta.Sequence.Stream > last {
				return floor, last, n, nil
			}
			n++
			if cmd, err := d.decode(m.Subject(), m.Data()); err == nil {
				keys := make([]string, 0, len(cmd.Devices))
				for _, dv := range cmd.Devices {
					l := d.links.lanes(dv.IDs)
					keys = append(append(keys, l.Key), l.Also...)
				}
				learn(meta.Sequence.Stream, keys)
			}
			if meta.Sequence.Stream == last {
				return floor, last, n, nil
			}
		}
		if err := msgs.Error(); err != nil {
			return floor, last, n, err
		}
		if got == 0 {
			return floor, last, n, errors.New("the stream ended before the last delivered command")
		}
	}
	return floor, last, n, errors.New("stopped reading at the limit; order across this takeover is not guaranteed beyond it")
}

func (d *dispatcher) decode(subject string, data []byte) (*command.Command, error) {
	action, err := command.ActionFromSubject(subject)
	if err != nil {
		return nil, err
	}
	return command.Decode(action, data, device.Options{Checksums: d.cfg.Checksums})
}

// take takes one command message in: an undecodable one goes to the dead
// letters, invalid devices become rejected events, the valid ones go into
// the book.
func (s *session) take(ctx context.Context, msg *nats.Msg) {
	d := s.d
	meta, err := msg.Metadata()
	if err != nil {
		d.log.Error().Err(err).Msg("command without metadata")
		_ = msg.Term()
		return
	}
	if meta.NumDelivered > 1 {
		d.m.redelivered.Inc()
	}
	cmd, err := d.decode(msg.Subject, msg.Data)
	if err != nil {
		d.undecodable(ctx, msg, meta, err)
		return
	}
	h := &held{
		msg:     msg,
		seq:     meta.Sequence.Stream,
		id:      command.CommandID(cmd.ID, msg.Header.Get(nats.MsgIdHdr), meta.Stream, meta.Sequence.Stream),
		action:  string(cmd.Action),
		account: cmd.AccountName,
		opts:    cmd.Options,
		key:     batch.Key{Action: string(cmd.Action), Account: cmd.AccountName, Options: cmd.Options.Key()},
		tries:   meta.NumDelivered,
	}
	d.log.Debug().Str(observability.FieldCommandID, h.id).Int(observability.FieldDevices, cmd.Len()).
		Int("rejected", len(cmd.Problems)).Uint64("delivery", meta.NumDelivered).Msg("command taken in")
	if len(cmd.Problems) > 0 {
		if err := d.rejectInvalid(s.work, h, cmd.Problems); err != nil {
			d.log.Warn().Err(err).Str(observability.FieldCommandID, h.id).Msg("rejected events not stored; command handed back")
			_ = msg.Nak()
			return
		}
	}
	h.setDevices(cmd.Devices)
	devs := make([]order.Device, len(cmd.Devices))
	for i, dv := range cmd.Devices {
		devs[i] = d.links.lanes(dv.IDs)
	}
	if meta.NumDelivered > 1 {
		if err := d.markSettled(ctx, h, meta.Timestamp, devs); err != nil {
			d.log.Warn().Err(err).Str(observability.FieldCommandID, h.id).Msg("status stream not readable; command handed back")
			_ = msg.NakWithDelay(time.Second)
			return
		}
	}
	exhausted := meta.NumDelivered > uint64(d.cfg.MaxDeliver)
	if exhausted {
		h.failure = "delivered " + strconv.FormatUint(meta.NumDelivered, 10) + " times without an outcome (MAX_DELIVER " + strconv.Itoa(d.cfg.MaxDeliver) + ")"
	}
	s.arrive(h, devs, exhausted)
}

// undecodable sends a command no device can be read from to the dead letters.
func (d *dispatcher) undecodable(ctx context.Context, msg *nats.Msg, meta *nats.MsgMetadata, cause error) {
	log := d.log.With().Str(observability.FieldSubject, msg.Subject).Uint64("stream_seq", meta.Sequence.Stream).Logger()
	log.Warn().Err(cause).Msg("undecodable command to the dead letters")
	if err := d.deadLetter(ctx, msg, cause.Error()); err != nil {
		log.Error().Err(err).Msg("dead letter failed; command handed back")
		_ = msg.NakWithDelay(time.Second)
		return
	}
	_ = msg.Term()
	d.m.commands.WithLabelValues("deadlettered").Inc()
}

// rejectInvalid publishes the rejected events of a command's invalid devices.
func (d *dispatcher) rejectInvalid(ctx context.Context, h *held, problems []command.Problem) error {
	evs := make([]status.Event, 0, len(problems))
	now := time.Now().UTC()
	for _, pr := range problems {
		reason := pr.Reason()
		evs = append(evs, status.Event{
			// The index keeps apart two problems of one command that read
			// as the same device (a repeat, or no readable identifier).
			EventID:     status.ID("command", string(status.Rejected), h.id, h.action, pr.Device.Key(), strconv.Itoa(pr.Index)),
			CommandID:   h.id,
			Action:      h.action,
			AccountName: h.account,
			Device:      pr.Device,
			Status:      status.Rejected,
			Final:       true,
			Reason:      &reason,
			OccurredAt:  now,
		})
	}
	if err := d.publish(ctx, evs, 0); err != nil {
		return err
	}
	d.m.devices.WithLabelValues(string(status.Rejected)).Add(float64(len(evs)))
	return nil
}

// seqHeader names, on the events that settle a device for a command
// (accepted, rejected by ThingSpace, failed), the command's stream
// sequence: a redelivery reads it to tell what an earlier delivery did.
const seqHeader = "Esim-Command-Seq"

// markSettled sets Done on the devices of a redelivered command that an
// earlier delivery settled: the status stream holds, since the command was
// published, an event of this command or a later one for the device and
// action (rule 2 of package order makes a later one imply this one's).
func (d *dispatcher) markSettled(ctx context.Context, h *held, published time.Time, devs []order.Device) error {
	var wg sync.WaitGroup
	errs := make(chan error, len(devs))
	sem := make(chan struct{}, 16)
	for i := range devs {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			done, err := d.settledSince(ctx, h, published, h.device(devs[i].Key))
			if err != nil {
				errs <- err
				return
			}
			devs[i].Done = done
		}()
	}
	wg.Wait()
	close(errs)
	return <-errs
}

func (d *dispatcher) settledSince(ctx context.Context, h *held, published time.Time, dev device.Set) (bool, error) {
	subject := status.Subject(h.action, dev)
	// Stream clocks may differ between cluster nodes: look a minute further back.
	opts := []jetstreamext.GetBatchOpt{jetstreamext.GetBatchSubject(subject), jetstreamext.GetBatchStartTime(published.Add(-time.Minute))}
	for {
		ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		msgs, err := jetstreamext.GetBatch(ctx, d.js, broker.StatusStream, 256, opts...)
		if err != nil {
			cancel()
			return false, err
		}
		var next uint64
		got := 0
		for m, err := range msgs {
			if errors.Is(err, jetstreamext.ErrNoMessages) {
				break
			}
			if err != nil {
				cancel()
				return false, err
			}
			got++
			next = m.Sequence + 1
			if seq, err := strconv.ParseUint(m.Header.Get(seqHeader), 10, 64); err == nil && seq >= h.seq {
				cancel()
				return true, nil
			}
		}
		cancel()
		if got < 256 {
			return false, nil
		}
		opts = []jetstreamext.GetBatchOpt{jetstreamext.GetBatchSubject(subject), jetstreamext.GetBatchSeq(next)}
	}
}
