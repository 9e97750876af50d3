package dispatch

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v5"

	"github.com/esim-pipeline/thingspace-esim/internal/batch"
	"github.com/esim-pipeline/thingspace-esim/internal/device"
	"github.com/esim-pipeline/thingspace-esim/internal/observability"
	"github.com/esim-pipeline/thingspace-esim/internal/status"
	"github.com/esim-pipeline/thingspace-esim/internal/thingspace"
)

// sendLoop sends batches one at a time, until the session stops: it waits
// for a batch to be due, then for a rate token of that batch's scope (the
// batch keeps filling meanwhile), then takes that batch and calls.
func (s *session) sendLoop() {
	for {
		k, ok := s.nextDue()
		if !ok {
			return
		}
		if err := s.d.limiter.Wait(s.stopped, s.d.scope(k.Account)); err != nil {
			return
		}
		s.mu.Lock()
		b := s.batcher.Take(k)
		s.gaugesLocked()
		s.mu.Unlock()
		if b == nil {
			continue
		}
		start := time.Now()
		full := len(b.Items) >= s.batcher.Max(k.Action)
		s.submit(b.Key, b.Items, true)
		s.d.log.Info().Str(observability.FieldAction, k.Action).Str(observability.FieldAccount, k.Account).
			Int(observability.FieldDevices, len(b.Items)).Bool("full", full).Dur(observability.FieldDuration, time.Since(start)).
			Msg("batch done")
		if full {
			s.d.m.batchFull.Inc()
		}
	}
}

// nextDue waits until a batch is due and returns its key; false once the
// session stops.
func (s *session) nextDue() (batch.Key, bool) {
	for {
		s.mu.Lock()
		k, ok := s.batcher.Peek()
		due := s.batcher.NextDue()
		s.mu.Unlock()
		if ok {
			return k, true
		}
		var timer <-chan time.Time
		if !due.IsZero() {
			t := time.NewTimer(time.Until(due))
			timer = t.C
			defer t.Stop()
		}
		select {
		case <-s.stopped.Done():
			return batch.Key{}, false
		case <-s.wake:
		case <-timer:
		}
	}
}

// submit makes the call for items (the first try on the token the caller
// holds) and hands its outcome to the outcome goroutine: accepted,
// rejected, or failed once its tries run out. A refusal that a device may
// have caused is split: the devices the answer names are rejected alone,
// the rest (or, with no names, each half) is called again.
func (s *session) submit(k batch.Key, items []batch.Item, haveToken bool) {
	reqID, err := s.d.call(s.stopped, s.work, k, items, haveToken)
	switch {
	case err == nil:
		s.accepted(k, items, reqID)
	case errors.Is(err, errStopped):
		// Stopping: the commands are handed back at the session's end.
	case thingspace.IsDeviceRefusal(err) && len(items) > 1:
		named, rest := splitNamed(err, items)
		if len(named) > 0 && len(rest) > 0 {
			s.rejected(k, named, err)
			s.submit(k, rest, false)
			return
		}
		half := len(items) / 2
		s.submit(k, items[:half], false)
		s.submit(k, items[half:], false)
	case thingspace.IsPermanent(err):
		s.rejected(k, items, err)
	default:
		s.d.log.Error().Err(err).Str(observability.FieldAction, k.Action).Int(observability.FieldDevices, len(items)).
			Int(observability.FieldAttempt, s.d.cfg.MaxAttempts).Msg("ThingSpace call failed for good; its devices end failed")
		s.failed(k, items, "ThingSpace call failed after "+fmt.Sprint(s.d.cfg.MaxAttempts)+" tries: "+err.Error(), reasonOf(err))
	}
}

// call makes one ThingSpace call, tried again in place on retryable errors
// up to MaxAttempts times with capped exponential backoff (a Retry-After
// capped the same way; a 429 pauses the limiter). Each try takes a rate
// token (the first may have one already), and registers the account's
// callback listener first when it is not yet. No new try starts once stop
// ends; a try under way finishes under work, so a stop never abandons a
// request ThingSpace may already have taken.
func (d *dispatcher) call(stop, work context.Context, k batch.Key, items []batch.Item, haveToken bool) (string, error) {
	req := d.request(k, items)
	scope := d.scope(k.Account)
	bo := backoff.NewExponentialBackOff()
	bo.InitialInterval = 500 * time.Millisecond
	bo.MaxInterval = d.cfg.RetryMaxWait
	try := func() (string, error) {
		if stop.Err() != nil {
			return "", backoff.Permanent(errStopped)
		}
		if !haveToken {
			if err := d.limiter.Wait(stop, scope); err != nil {
				return "", backoff.Permanent(errStopped)
			}
		}
		haveToken = false
		if err := d.register(stop, work, k.Account); errors.Is(err, errStopped) {
			return "", backoff.Permanent(errStopped)
		} else if err != nil {
			return "", d.retryable(scope, err)
		}
		start := time.Now()
		reqID, err := d.ts.ProfileAction(work, k.Action, req)
		d.m.callSeconds.WithLabelValues(k.Action).Observe(time.Since(start).Seconds())
		d.m.calls.WithLabelValues(k.Action, statusCode(err)).Inc()
		if err != nil {
			return "", d.retryable(scope, err)
		}
		d.limiter.Succeeded(scope)
		d.m.batches.WithLabelValues(k.Action).Inc()
		d.m.batchSize.Observe(float64(len(items)))
		d.batches.Add(1)
		return reqID, nil
	}
	reqID, err := backoff.Retry(stop, try,
		backoff.WithBackOff(bo),
		backoff.WithMaxTries(uint(d.cfg.MaxAttempts)),
		backoff.WithMaxElapsedTime(0),
		backoff.WithNotify(func(err error, wait time.Duration) {
			d.m.retries.Inc()
			d.log.Warn().Err(err).Str(observability.FieldAction, k.Action).Int(observability.FieldDevices, len(items)).
				Dur("wait", wait).Msg("ThingSpace call failed; trying again in place")
		}))
	if err != nil && stop.Err() != nil && !(thingspace.IsPermanent(err) && !errors.Is(err, errStopped)) {
		err = errStopped // not ThingSpace's last word: the commands go back
	}
	return reqID, err
}

// retryable classifies a failed try for backoff.Retry: permanent errors end
// the tries; a Retry-After is obeyed, capped at RetryMaxWait; a 429 pauses
// the fleet's limiter instead.
func (d *dispatcher) retryable(scope string, err error) error {
	if errors.Is(err, context.Canceled) {
		return backoff.Permanent(errStopped)
	}
	if !thingspace.Retryable(err) && !thingspace.IsAuth(err) {
		return backoff.Permanent(err)
	}
	if errors.Is(err, thingspace.ErrRateLimited) {
		d.m.throttled.Inc()
		wait, ok := thingspace.RetryAfter(err)
		if !ok {
			wait = time.Second
		}
		d.limiter.Throttled(scope, wait)
		return fmt.Errorf("%w: %w", &backoff.RetryAfterError{Duration: 0}, err) // the limiter holds the next try
	}
	if wait, ok := thingspace.RetryAfter(err); ok {
		return fmt.Errorf("%w: %w", &backoff.RetryAfterError{Duration: min(wait, d.cfg.RetryMaxWait)}, err)
	}
	return err
}

// request is the ThingSpace body for items.
func (d *dispatcher) request(k batch.Key, items []batch.Item) thingspace.ProfileRequest {
	opts := items[0].Ref.(*held).opts // equal for every item of a key
	req := thingspace.ProfileRequest{
		Devices:     make([]thingspace.Device, len(items)),
		AccountName: k.Account,
		SmsrOid:     opts.SmsrOid,
		ServicePlan: opts.ServicePlan,
		EtfWaiver:   opts.EtfWaiver,
		ReasonCode:  opts.ReasonCode,
	}
	for i, it := range items {
		req.Devices[i] = thingspace.DeviceFromSet(it.Device)
	}
	return req
}

// registrations remembers the accounts whose callback listener is
// registered in this process, and the ones ThingSpace refused lately.
type registrations struct {
	mu      sync.Mutex
	done    map[string]bool
	refused map[string]time.Time
}

// refusedFor is how long a refused registration is not tried again.
const refusedFor = 10 * time.Minute

// register registers the callback URL for account once per start, under
// the same token, tries and classification as a call: a retryable error
// is returned (and the call's try fails with it); a refusal is logged and
// counted, the call goes without it, and it is tried again later.
func (d *dispatcher) register(stop, work context.Context, account string) error {
	if d.cfg.CallbackURL == "" {
		return nil
	}
	r := &d.registered
	r.mu.Lock()
	skip := r.done[account] || time.Now().Before(r.refused[account])
	r.mu.Unlock()
	if skip {
		return nil
	}
	reg := thingspace.CallbackRegistration{
		Name:     "DeviceProfileService",
		URL:      d.cfg.CallbackURL,
		Username: d.cfg.CallbackUsername,
		Password: d.cfg.CallbackPassword.Reveal(),
	}
	err := d.ts.RegisterCallback(work, account, reg)
	d.m.calls.WithLabelValues("register_callback", statusCode(err)).Inc()
	if err == nil {
		d.limiter.Succeeded(d.scope(account))
		r.mu.Lock()
		if r.done == nil {
			r.done = map[string]bool{}
		}
		if len(r.done) < maxAccounts {
			r.done[account] = true
		}
		r.mu.Unlock()
		d.log.Info().Str(observability.FieldAccount, account).Str("url", d.cfg.CallbackURL).Msg("callback listener registered")
		// The call needs a token of its own.
		if err := d.limiter.Wait(stop, d.scope(account)); err != nil {
			return backoff.Permanent(errStopped)
		}
		return nil
	}
	if thingspace.Retryable(err) || thingspace.IsAuth(err) || errors.Is(err, context.Canceled) {
		return err
	}
	d.log.Error().Err(err).Str(observability.FieldAccount, account).Str("url", d.cfg.CallbackURL).Dur("again_in", refusedFor).
		Msg("ThingSpace refused the callback listener; calls go on without it (the deadline check reconciles their devices)")
	r.mu.Lock()
	if r.refused == nil {
		r.refused = map[string]time.Time{}
	}
	if len(r.refused) >= maxAccounts {
		clear(r.refused)
	}
	r.refused[account] = time.Now().Add(refusedFor)
	r.mu.Unlock()
	if err := d.limiter.Wait(stop, d.scope(account)); err != nil {
		return backoff.Permanent(errStopped)
	}
	return nil
}

// maxAccounts bounds what is remembered per account.
const maxAccounts = 10_000

// reasonOf turns a ThingSpace error into an event's reason, code without
// the service prefix. Error texts never carry secrets.
func reasonOf(err error) status.Reason {
	var apiErr *thingspace.APIError
	if errors.As(err, &apiErr) {
		code := apiErr.ShortCode()
		if code == "" {
			code = "HTTP_" + fmt.Sprint(apiErr.HTTPStatus)
		}
		return status.Reason{Code: code, Message: apiErr.Message}
	}
	return status.Reason{Code: "SUBMISSION_FAILED", Message: err.Error()}
}

// splitNamed separates the items whose device the error message names from
// the rest.
func splitNamed(err error, items []batch.Item) (named, rest []batch.Item) {
	var apiErr *thingspace.APIError
	errors.As(err, &apiErr)
	for _, it := range items {
		hit := false
		for _, k := range device.Kinds {
			if v := it.Device.Get(k); len(v) >= 10 && strings.Contains(apiErr.Message, v) {
				hit = true
				break
			}
		}
		if hit {
			named = append(named, it)
		} else {
			rest = append(rest, it)
		}
	}
	return named, rest
}

// statusCode is an answer class for metrics.
func statusCode(err error) string {
	if err == nil {
		return "2xx"
	}
	var apiErr *thingspace.APIError
	if errors.As(err, &apiErr) {
		switch {
		case apiErr.HTTPStatus == http.StatusTooManyRequests:
			return "429"
		case apiErr.HTTPStatus >= 500:
			return "5xx"
		case apiErr.HTTPStatus > 0:
			return fmt.Sprint(apiErr.HTTPStatus)
		}
	}
	return "error"
}
