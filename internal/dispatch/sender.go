package dispatch

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"time"

	"github.com/cenkalti/backoff/v5"

	"github.com/esim-pipeline/thingspace-esim/internal/batch"
	"github.com/esim-pipeline/thingspace-esim/internal/command"
	"github.com/esim-pipeline/thingspace-esim/internal/correlation"
	"github.com/esim-pipeline/thingspace-esim/internal/device"
	"github.com/esim-pipeline/thingspace-esim/internal/observability"
	"github.com/esim-pipeline/thingspace-esim/internal/status"
	"github.com/esim-pipeline/thingspace-esim/internal/thingspace"
)

// sendLoop sends batches one at a time, in the batcher's order, which is
// what keeps one device's actions in publish order. It waits for a batch to
// be due, then for a rate token (the batch keeps filling meanwhile), then
// takes whatever is next. Once stop ends it returns after the call in flight;
// work ctx bounds that call's follow-up (record, events, acks).
func (s *Service) sendLoop(stop, work context.Context) {
	// Outcomes (events, records marked published) are stored by one
	// goroutine in call order, while the next call is made: ThingSpace's
	// answer time and the store's overlap, and one subject's events keep the
	// calls' order. What needs no order (a record first stored, a deadline,
	// the acks) goes beside it, and is waited for before sendLoop returns.
	// Unbuffered: one batch stored while the next is called, which with
	// the open batch fits the default MAX_ACK_PENDING of three batches.
	outcomes := make(chan func())
	done := make(chan struct{})
	go func() {
		defer close(done)
		for f := range outcomes {
			f()
		}
	}()
	s.later = func(f func()) { outcomes <- f }
	defer func() { close(outcomes); <-done; s.background.Wait() }()
	for {
		if !s.awaitReady(stop) {
			return
		}
		s.mu.Lock()
		next, ok := s.batcher.Peek()
		s.mu.Unlock()
		if !ok {
			continue
		}
		if err := s.limiter.Wait(stop, s.scope(next.Account)); err != nil {
			return
		}
		s.mu.Lock()
		b := s.batcher.Take(false)
		if b != nil {
			s.takeLocked(b)
			if len(b.Devices) == 0 {
				b = nil
			}
		}
		var opts command.Options
		if b != nil {
			// Kept for the life of the process: there are few distinct keys.
			opts = s.options[b.Key]
		}
		s.mu.Unlock()
		if b == nil {
			continue
		}
		s.send(stop, work, b, opts)
	}
}

// awaitReady blocks until the batcher has a batch due, or ctx ends.
func (s *Service) awaitReady(ctx context.Context) bool {
	for {
		s.mu.Lock()
		ready := s.batcher.Ready()
		due := s.batcher.NextDue()
		s.mu.Unlock()
		if ready {
			return true
		}
		var timer <-chan time.Time
		if !due.IsZero() {
			t := time.NewTimer(time.Until(due))
			defer t.Stop()
			timer = t.C
		}
		select {
		case <-ctx.Done():
			return false
		case <-s.wake:
		case <-timer:
		}
	}
}

// group is devices that share one outcome of one call.
type group struct {
	devices []device.Set
	items   map[string][]batch.Item // device key -> the commands asking for it
}

func (s *Service) send(stop, work context.Context, b *batch.Batch, opts command.Options) {
	items := make(map[string][]batch.Item, len(b.Devices))
	for _, it := range b.Items {
		k := it.Device.Key()
		items[k] = append(items[k], it)
	}
	full := len(b.Devices) >= s.batcher.Max(b.Key.Action)
	start := time.Now()
	s.submit(stop, work, b.Key, opts, group{devices: b.Devices, items: items}, true)
	ev := s.log.Info().Str(observability.FieldAction, b.Key.Action).Str(observability.FieldAccount, b.Key.Account).
		Int(observability.FieldDevices, len(b.Devices)).Int("commands", len(b.Items)).Bool("full", full).
		Dur(observability.FieldDuration, time.Since(start))
	ev.Msg("batch done")
	if full {
		s.m.batchFull.Inc()
	}
}

// submit makes the call for g (bisecting on a 400 that a device may have
// caused) and settles every device of g: accepted, rejected, or handed back.
func (s *Service) submit(stop, work context.Context, k batch.Key, opts command.Options, g group, haveToken bool) {
	reqID, err := s.call(stop, work, k, opts, g.devices, haveToken)
	switch {
	case err == nil:
		a := s.startAccepted(work, k, g, reqID)
		s.later(func() { s.accepted(work, a) })
	case isDeviceRefusal(err) && len(g.devices) > 1:
		// Devices the answer names are rejected alone; without names, halve.
		named, rest := splitNamed(err, g)
		if len(named.devices) > 0 && len(rest.devices) > 0 {
			s.later(func() { s.rejected(work, k, named, err) })
			s.submit(stop, work, k, opts, rest, false)
			return
		}
		half := len(g.devices) / 2
		s.submit(stop, work, k, opts, g.sub(g.devices[:half]), false)
		s.submit(stop, work, k, opts, g.sub(g.devices[half:]), false)
	case thingspace.IsPermanent(err) && isBadRequest(err):
		s.later(func() { s.rejected(work, k, g, err) })
	default:
		// Fenced now, before the next call: the commands behind these
		// that name the same devices must wait for their return.
		s.fenceGroup(g)
		s.later(func() { s.failedCall(work, k, g, err) })
	}
}

func (g group) sub(devs []device.Set) group {
	out := group{devices: devs, items: make(map[string][]batch.Item, len(devs))}
	for _, d := range devs {
		out.items[d.Key()] = g.items[d.Key()]
	}
	return out
}

// call makes one ThingSpace call, trying again on retryable errors up to
// MaxAttempts times with exponential backoff (or as Retry-After says). Waits
// end when stop ends; a call under way is finished under work, so a stop
// never abandons a request ThingSpace may already have taken.
func (s *Service) call(stop, work context.Context, k batch.Key, opts command.Options, devs []device.Set, haveToken bool) (string, error) {
	ctx := stop
	if err := s.ensureCallback(work, k.Account); err != nil {
		return "", err
	}
	req := thingspace.ProfileRequest{
		Devices:     make([]thingspace.Device, len(devs)),
		AccountName: k.Account,
		SmsrOid:     opts.SmsrOid,
		ServicePlan: opts.ServicePlan,
		EtfWaiver:   opts.EtfWaiver,
		ReasonCode:  opts.ReasonCode,
	}
	for i, d := range devs {
		req.Devices[i] = thingspace.DeviceFromSet(d)
	}
	bo := backoff.NewExponentialBackOff()
	bo.InitialInterval = 500 * time.Millisecond
	bo.MaxInterval = 30 * time.Second
	for attempt := 1; ; attempt++ {
		if !haveToken {
			if err := s.limiter.Wait(ctx, s.scope(k.Account)); err != nil {
				return "", err
			}
		}
		haveToken = false
		start := time.Now()
		if ctx.Err() != nil {
			return "", ctx.Err()
		}
		reqID, err := s.ts.ProfileAction(work, k.Action, req)
		s.m.callSeconds.WithLabelValues(k.Action).Observe(time.Since(start).Seconds())
		s.m.calls.WithLabelValues(k.Action, statusCode(err)).Inc()
		if err == nil {
			s.limiter.Succeeded(s.scope(k.Account))
			s.m.batches.WithLabelValues(k.Action).Inc()
			s.batches.Add(1)
			s.m.batchSize.Observe(float64(len(devs)))
			return reqID, nil
		}
		if ctx.Err() != nil {
			return "", ctx.Err()
		}
		wait := bo.NextBackOff()
		if errors.Is(err, thingspace.ErrRateLimited) {
			s.m.throttled.Inc()
			d, ok := thingspace.RetryAfter(err)
			if !ok {
				d = wait
			}
			s.limiter.Throttled(s.scope(k.Account), d)
			wait = 0 // the limiter holds the next call back
		} else if d, ok := thingspace.RetryAfter(err); ok {
			wait = d
		}
		retryable := thingspace.Retryable(err) || thingspace.IsAuth(err)
		if !retryable || attempt >= s.cfg.MaxAttempts {
			return "", err
		}
		s.m.retries.Inc()
		s.log.Warn().Err(err).Str(observability.FieldAction, k.Action).Int(observability.FieldAttempt, attempt).
			Dur("wait", wait).Msg("ThingSpace call failed; trying again")
		if wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-ctx.Done():
				t.Stop()
				return "", ctx.Err()
			case <-t.C:
			}
		}
	}
}

// ensureCallback registers the callback URL for account, once per start.
func (s *Service) ensureCallback(ctx context.Context, account string) error {
	if s.cfg.CallbackURL == "" || s.registered[account] {
		return nil
	}
	reg := thingspace.CallbackRegistration{
		Name:     "DeviceProfileService",
		URL:      s.cfg.CallbackURL,
		Username: s.cfg.CallbackUsername,
		Password: s.cfg.CallbackPassword.Reveal(),
	}
	if err := s.ts.RegisterCallback(ctx, account, reg); err != nil {
		return err
	}
	s.registered[account] = true
	s.log.Info().Str(observability.FieldAccount, account).Str("url", s.cfg.CallbackURL).Msg("callback listener registered")
	return nil
}

// acceptance is the outcome of a call ThingSpace took: its record and
// events, and whether the record and the deadline are stored (done closes).
type acceptance struct {
	g    group
	rec  *correlation.Record
	evs  []status.Event
	done chan struct{}
	err  error // of the record or the deadline, once done is closed
}

// startAccepted stores the record and the deadline of an accepted call
// beside the outcome goroutine: they need not wait for the events of the
// calls before (a callback waits for the record's Published), so the disk
// is not idle between one call's events and the next's.
func (s *Service) startAccepted(ctx context.Context, k batch.Key, g group, reqID string) *acceptance {
	now := time.Now().UTC()
	a := &acceptance{g: g, done: make(chan struct{}),
		rec: &correlation.Record{RequestID: reqID, Action: k.Action, AccountName: k.Account, SubmittedAt: now}}
	for _, d := range g.devices {
		for _, it := range g.items[d.Key()] {
			p := it.Ref.(*pending)
			a.rec.Devices = append(a.rec.Devices, correlation.Entry{CommandID: p.id, Device: it.Device})
			a.evs = append(a.evs, status.Event{
				EventID:     status.CommandEventID(status.Accepted, p.id, k.Action, it.Device),
				CommandID:   p.id,
				RequestID:   reqID,
				Action:      k.Action,
				AccountName: k.Account,
				Device:      it.Device,
				Status:      status.Accepted,
				OccurredAt:  now,
			})
		}
	}
	s.background.Go(func() {
		defer close(a.done)
		a.err = s.putRecord(ctx, a.rec)
		if a.err == nil {
			a.err = s.scheduleDeadline(ctx, reqID, k.Action, k.Account, now)
		}
	})
	return a
}

// accepted stores the accepted events of a (after those of the calls
// before, on the outcome goroutine), then marks the record published and
// acknowledges the commands; the acks go out beside the next outcome.
func (s *Service) accepted(ctx context.Context, a *acceptance) {
	<-a.done
	err := a.err
	if err == nil {
		err = s.publish(ctx, a.evs)
	}
	if err == nil {
		// Callbacks may be turned into events from now on: they come after
		// the accepted events on each device's subject.
		a.rec.Published = true
		err = s.putRecord(ctx, a.rec)
	}
	if err != nil {
		// ThingSpace has the request but its outcome is not durable here:
		// hand the commands back; the redelivery submits them again.
		s.log.Error().Err(err).Str(observability.FieldRequestID, a.rec.RequestID).Msg("accepted outcome not stored; commands handed back")
		s.handBackGroup(a.g, time.Second)
		return
	}
	s.m.devices.WithLabelValues(string(status.Accepted)).Add(float64(len(a.evs)))
	s.background.Go(func() { s.settleGroup(ctx, a.g) })
	s.log.Debug().Str(observability.FieldRequestID, a.rec.RequestID).Int(observability.FieldDevices, len(a.g.devices)).Msg("accepted")
}

// putRecord stores rec, trying again while NATS is away, until ctx ends.
func (s *Service) putRecord(ctx context.Context, rec *correlation.Record) error {
	return s.persist(ctx, "requestId record "+rec.RequestID, func(ctx context.Context) error { return s.store.Put(ctx, rec) })
}

// persist runs one store operation (10-second attempts) until it succeeds
// or ctx ends, backing off up to 2 s: NATS away for a while must not lose
// an outcome ThingSpace already has.
func (s *Service) persist(ctx context.Context, what string, op func(context.Context) error) error {
	wait := 100 * time.Millisecond
	for {
		actx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := op(actx)
		cancel()
		if err == nil {
			return nil
		}
		s.log.Warn().Err(err).Str("what", what).Msg("not stored yet; trying again")
		select {
		case <-ctx.Done():
			return err
		case <-time.After(wait):
		}
		if wait < 2*time.Second {
			wait *= 2
		}
	}
}

// rejected publishes ThingSpace's refusal for every device of g and settles.
func (s *Service) rejected(ctx context.Context, k batch.Key, g group, cause error) {
	s.final(ctx, k, g, status.Rejected, reasonOf(cause))
}

// final publishes a final event of st for every device of g and settles them.
func (s *Service) final(ctx context.Context, k batch.Key, g group, st status.Status, reason status.Reason) {
	now := time.Now().UTC()
	var evs []status.Event
	for _, d := range g.devices {
		for _, it := range g.items[d.Key()] {
			p := it.Ref.(*pending)
			r := reason
			evs = append(evs, status.Event{
				EventID:     status.CommandEventID(st, p.id, k.Action, it.Device),
				CommandID:   p.id,
				Action:      k.Action,
				AccountName: k.Account,
				Device:      it.Device,
				Status:      st,
				Final:       true,
				Reason:      &r,
				OccurredAt:  now,
			})
		}
	}
	if err := s.publish(ctx, evs); err != nil {
		s.log.Error().Err(err).Str(observability.FieldStatus, string(st)).Msg("events not stored; commands handed back")
		s.handBackGroup(g, time.Second)
		return
	}
	s.m.devices.WithLabelValues(string(st)).Add(float64(len(evs)))
	s.settleGroup(ctx, g)
}

// failedCall handles a call that could not be made: the commands go back to
// the stream for a later delivery, except on their last delivery, where the
// devices end `failed` and the command goes to the dead letters.
func (s *Service) failedCall(ctx context.Context, k batch.Key, g group, err error) {
	var last, back group
	last.items, back.items = map[string][]batch.Item{}, map[string][]batch.Item{}
	for _, d := range g.devices {
		for _, it := range g.items[d.Key()] {
			p := it.Ref.(*pending)
			dst := &back
			if p.last {
				dst = &last
				p.failed.Store(true)
				p.lastErr.Store(err.Error())
			}
			if len(dst.items[d.Key()]) == 0 {
				dst.devices = append(dst.devices, d)
			}
			dst.items[d.Key()] = append(dst.items[d.Key()], it)
		}
	}
	if len(back.devices) > 0 {
		s.log.Warn().Err(err).Str(observability.FieldAction, k.Action).Int(observability.FieldDevices, len(back.devices)).
			Msg("ThingSpace call failed; commands handed back")
		s.handBackGroup(back, 5*time.Second)
	}
	if len(last.devices) > 0 {
		s.final(ctx, k, last, status.Failed, reasonOf(err))
	}
}

func (s *Service) settleGroup(ctx context.Context, g group) {
	counts := map[*pending]int{}
	for _, its := range g.items {
		for _, it := range its {
			counts[it.Ref.(*pending)]++
		}
	}
	for p, n := range counts {
		s.settle(ctx, p, n)
	}
}

// handBackGroup hands back the commands of g, their devices fenced.
func (s *Service) handBackGroup(g group, delay time.Duration) {
	s.fenceGroup(g)
	for _, its := range g.items {
		for _, it := range its {
			s.handBack(it.Ref.(*pending), delay)
		}
	}
}

// reasonOf turns a ThingSpace error into an event's reason, code without
// the service prefix. Error texts never carry secrets.
func reasonOf(err error) status.Reason {
	var apiErr *thingspace.APIError
	if errors.As(err, &apiErr) {
		code := apiErr.Code
		if code == "" {
			code = "HTTP_" + strconv.Itoa(apiErr.HTTPStatus)
		}
		return status.Reason{Code: code, Message: apiErr.Message}
	}
	return status.Reason{Code: "SUBMISSION_FAILED", Message: err.Error()}
}

// isBadRequest reports a 400: ThingSpace refused the request's content.
func isBadRequest(err error) bool {
	var apiErr *thingspace.APIError
	return errors.As(err, &apiErr) && apiErr.HTTPStatus == 400
}

// isDeviceRefusal reports a 400 that a device in the request may have
// caused: its code names a device, or it has no code. Account-level refusals
// (AccountNotFound, ...) are the same for every device: no bisecting.
func isDeviceRefusal(err error) bool {
	var apiErr *thingspace.APIError
	if !errors.As(err, &apiErr) || apiErr.HTTPStatus != 400 {
		return false
	}
	if errors.Is(err, thingspace.ErrSessionExpired) {
		return false
	}
	c := strings.ToLower(apiErr.Code)
	return c == "" || strings.Contains(c, "device")
}

// splitNamed separates the devices the error message names from the rest.
func splitNamed(err error, g group) (named, rest group) {
	var apiErr *thingspace.APIError
	errors.As(err, &apiErr)
	msg := apiErr.Message
	var n, r []device.Set
	for _, d := range g.devices {
		hit := false
		for _, k := range device.Kinds {
			if v := d.Get(k); len(v) >= 10 && strings.Contains(msg, v) {
				hit = true
				break
			}
		}
		if hit {
			n = append(n, d)
		} else {
			r = append(r, d)
		}
	}
	return g.sub(n), g.sub(r)
}
