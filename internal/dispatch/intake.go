package dispatch

import (
	"context"
	"encoding/json"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/esim-pipeline/thingspace-esim/internal/batch"
	"github.com/esim-pipeline/thingspace-esim/internal/broker"
	"github.com/esim-pipeline/thingspace-esim/internal/command"
	"github.com/esim-pipeline/thingspace-esim/internal/device"
	"github.com/esim-pipeline/thingspace-esim/internal/observability"
	"github.com/esim-pipeline/thingspace-esim/internal/status"
)

// intake takes one command message: undecodable ones go to the dead
// letters, invalid devices become rejected events, valid ones wait in the
// batcher.
func (s *Service) intake(ctx context.Context, msg jetstream.Msg) {
	meta, err := msg.Metadata()
	if err != nil {
		s.log.Error().Err(err).Msg("command without metadata")
		_ = msg.Term()
		return
	}
	if meta.NumDelivered > 1 {
		s.m.duplicateCalls.Inc()
	}
	action, err := command.ActionFromSubject(msg.Subject())
	if err == nil {
		var cmd *command.Command
		cmd, err = command.Decode(action, msg.Data(), device.Options{Checksums: s.cfg.Checksums})
		if err == nil {
			s.accept(ctx, msg, meta, cmd)
			return
		}
	}
	log := s.log.With().Str(observability.FieldSubject, msg.Subject()).Uint64("stream_seq", meta.Sequence.Stream).Logger()
	log.Warn().Err(err).Msg("undecodable command to the dead letters")
	if dlErr := s.deadLetter(ctx, msg, err.Error()); dlErr != nil {
		log.Error().Err(dlErr).Msg("dead letter failed; command handed back")
		_ = msg.NakWithDelay(time.Second)
		return
	}
	_ = msg.Term()
	s.m.commands.WithLabelValues("deadlettered").Inc()
}

func (s *Service) accept(ctx context.Context, msg jetstream.Msg, meta *jetstream.MsgMetadata, cmd *command.Command) {
	id := command.CommandID(cmd.ID, msg.Headers().Get(nats.MsgIdHdr), meta.Stream, meta.Sequence.Stream)
	p := &pending{
		msg:     msg,
		seq:     meta.Sequence.Stream,
		id:      id,
		action:  string(cmd.Action),
		account: cmd.AccountName,
		last:    meta.NumDelivered >= uint64(s.cfg.MaxDeliver),
	}
	p.remaining.Store(int64(cmd.Len()))
	if s.hold(p) {
		// Nothing else in hand: commands below this one that are not
		// acknowledged (another dispatcher's) go first (order.go).
		s.fenceUnacked(ctx, p.seq)
	}
	s.log.Debug().Str(observability.FieldCommandID, id).Int(observability.FieldDevices, cmd.Len()).
		Int("rejected", len(cmd.Problems)).Msg("command taken in")

	if len(cmd.Problems) > 0 {
		evs := make([]status.Event, 0, len(cmd.Problems))
		now := time.Now().UTC()
		for _, pr := range cmd.Problems {
			reason := pr.Reason()
			evs = append(evs, status.Event{
				// The index keeps apart two problems of one command that read
				// as the same device (a repeat, or no readable identifier).
				EventID:     status.ID("command", string(status.Rejected), id, p.action, pr.Device.Key(), strconv.Itoa(pr.Index)),
				CommandID:   id,
				Action:      p.action,
				AccountName: p.account,
				Device:      pr.Device,
				Status:      status.Rejected,
				Final:       true,
				Reason:      &reason,
				OccurredAt:  now,
			})
		}
		if err := s.publish(ctx, evs); err != nil {
			s.log.Warn().Err(err).Str(observability.FieldCommandID, id).Msg("rejected events not stored; command handed back")
			s.fenceDevices(cmd.Devices, p)
			s.handBack(p, time.Second)
			return
		}
		s.m.devices.WithLabelValues(string(status.Rejected)).Add(float64(len(evs)))
		s.settle(ctx, p, len(evs))
	}
	devices := cmd.Devices
	if meta.NumDelivered > 1 {
		// A redelivery: devices an earlier delivery already carried to
		// ThingSpace have this command's event as their latest; they are
		// not sent twice.
		var done int
		devices, done = s.notYetDone(ctx, id, p.action, devices)
		if done > 0 {
			s.log.Info().Str(observability.FieldCommandID, id).Int("already_done", done).Msg("redelivered command: devices already submitted are skipped")
			s.settle(ctx, p, done)
		}
	}
	// Back after a hand-back: devices already done need not hold back
	// their later commands (the others lift their fences as they leave).
	s.liftDone(p.seq, cmd.Devices, devices)
	if len(devices) == 0 {
		return
	}
	key := batch.Key{Action: p.action, Account: cmd.AccountName, Options: cmd.Options.Key()}
	s.mu.Lock()
	s.options[key] = cmd.Options
	for _, d := range devices {
		s.addLocked(key, batch.Item{Device: d.IDs, Ref: p})
	}
	s.mu.Unlock()
	s.wakeUp()
}

// notYetDone returns the devices whose latest status event is not one of
// command id's, and how many were left out. When the status stream cannot
// be read, every device is returned: sending twice beats not sending.
func (s *Service) notYetDone(ctx context.Context, id, action string, devices []command.Device) ([]command.Device, int) {
	stream, err := s.js.Stream(ctx, broker.StatusStream)
	if err != nil {
		return devices, 0
	}
	out := devices[:0:0]
	for _, d := range devices {
		m, err := stream.GetLastMsgForSubject(ctx, status.Subject(action, d.IDs))
		if err == nil {
			var last struct {
				CommandID string `json:"commandId"`
			}
			if json.Unmarshal(m.Data, &last) == nil && last.CommandID == id {
				continue
			}
		}
		out = append(out, d)
	}
	return out, len(devices) - len(out)
}

// publishTimeout bounds one event publish: its wait for a free slot among
// the async publishes in flight, and then for its ack.
const publishTimeout = 10 * time.Second

// publish stores events on their status subjects, each with its eventId as
// Nats-Msg-Id, and returns once every one is acknowledged. Failed publishes
// are tried again until ctx ends: an event that is not stored must not let
// its command be acknowledged.
func (s *Service) publish(ctx context.Context, evs []status.Event) error {
	todo := evs
	wait := 100 * time.Millisecond
	for {
		var failed []status.Event
		futures := make([]jetstream.PubAckFuture, 0, len(todo))
		sent := make([]status.Event, 0, len(todo))
		for _, ev := range todo {
			m, err := eventMsg(ev)
			if err != nil {
				return err
			}
			// At MAX pending the publish waits for acks to free a slot (as
			// long as an ack may take), rather than failing after nats.go's
			// 200 ms and waiting for the whole batch and a retry.
			f, err := s.js.PublishMsgAsync(m, jetstream.WithStallWait(publishTimeout))
			if err != nil {
				s.log.Debug().Err(err).Str(observability.FieldEventID, ev.EventID).Msg("event publish")
				failed = append(failed, ev)
				continue
			}
			futures = append(futures, f)
			sent = append(sent, ev)
		}
		for i, f := range futures {
			select {
			case <-f.Ok():
			case err := <-f.Err():
				s.log.Debug().Err(err).Str(observability.FieldEventID, sent[i].EventID).Msg("event publish")
				failed = append(failed, sent[i])
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		if len(failed) == 0 {
			return nil
		}
		todo = failed
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
		if wait < 2*time.Second {
			wait *= 2
		}
	}
}

// eventMsg is ev as a NATS message.
func eventMsg(ev status.Event) (*nats.Msg, error) {
	m := nats.NewMsg(ev.Subject())
	m.Data = ev.AppendJSON(make([]byte, 0, 512))
	m.Header.Set(nats.MsgIdHdr, ev.EventID)
	m.Header.Set(jetstream.ExpectedStreamHeader, broker.StatusStream)
	return m, nil
}
