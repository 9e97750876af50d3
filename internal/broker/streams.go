package broker

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Names of the streams, subjects and buckets the pipeline creates.
const (
	CommandStream          = "THINGSPACE_COMMANDS"
	CommandSubjects        = "thingspace.profile.commands.>"
	StatusStream           = "THINGSPACE_STATUS"
	StatusSubjects         = "thingspace.profile.status.>"
	CallbackStream         = "THINGSPACE_CALLBACKS"
	CallbackSubject        = "thingspace.profile.callbacks.raw"
	DeadLetterStream       = "THINGSPACE_DEADLETTER"
	DeadLetterSubjects     = "thingspace.profile.deadletter.>"
	DeadLetterCommands     = "thingspace.profile.deadletter.commands"
	DeadLetterCallbacks    = "thingspace.profile.deadletter.callbacks"
	DeadlineStream         = "THINGSPACE_DEADLINES"
	DeadlineSubject        = "thingspace.profile.deadlines"
	DeadlineConsumer       = "deadline-watcher"
	RequestBucket          = "thingspace_requests"
	DispatcherConsumer     = "dispatcher"
	CallbackFanoutConsumer = "callback-fanout"
)

// StreamSettings are the durability knobs of the streams a service creates.
type StreamSettings struct {
	// Replicas of every stream and bucket: 1 on one server, 3 on a cluster.
	Replicas int
	// Storage is file (the default) or memory.
	Storage jetstream.StorageType
	// CommandMaxAge keeps commands this long (default 7 days).
	CommandMaxAge time.Duration
	// StatusMaxAge keeps status history this long (default 30 days).
	StatusMaxAge time.Duration
	// CallbackMaxAge keeps raw callbacks, for replay (default 7 days).
	CallbackMaxAge time.Duration
	// DeadLetterMaxAge keeps dead letters (default 30 days).
	DeadLetterMaxAge time.Duration
	// CommandDuplicates is the command stream's Nats-Msg-Id window (default 10m).
	CommandDuplicates time.Duration
	// EventDuplicates is the status and callback streams' window; it must
	// cover ThingSpace's resend span of 15 minutes (default 20m).
	EventDuplicates time.Duration
	// RequestTTL keeps requestId records (default 7 days).
	RequestTTL time.Duration
}

func (s *StreamSettings) setDefaults() {
	if s.Replicas <= 0 {
		s.Replicas = 1
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&s.CommandMaxAge, 7*24*time.Hour)
	def(&s.StatusMaxAge, 30*24*time.Hour)
	def(&s.CallbackMaxAge, 7*24*time.Hour)
	def(&s.DeadLetterMaxAge, 30*24*time.Hour)
	def(&s.CommandDuplicates, 10*time.Minute)
	def(&s.EventDuplicates, 20*time.Minute)
	def(&s.RequestTTL, 7*24*time.Hour)
}

// Validate reports settings that cannot work.
func (s StreamSettings) Validate() error {
	if s.Replicas < 1 || s.Replicas > 5 {
		return fmt.Errorf("STREAM_REPLICAS: %d is out of range 1..5", s.Replicas)
	}
	if s.EventDuplicates < 15*time.Minute {
		return fmt.Errorf("event duplicate window %s is shorter than ThingSpace's 15-minute resend span", s.EventDuplicates)
	}
	return nil
}

// Streams returns the definitions of every stream, with settings applied.
func Streams(s StreamSettings) []jetstream.StreamConfig {
	s.setDefaults()
	return []jetstream.StreamConfig{
		{
			Name:        CommandStream,
			Description: "eSIM profile-action commands from upstream producers",
			Subjects:    []string{CommandSubjects},
			Storage:     s.Storage,
			Replicas:    s.Replicas,
			Retention:   jetstream.LimitsPolicy,
			MaxAge:      s.CommandMaxAge,
			Duplicates:  s.CommandDuplicates,
			Discard:     jetstream.DiscardOld,
		},
		{
			Name:              StatusStream,
			Description:       "per-device status events, history kept",
			Subjects:          []string{StatusSubjects},
			Storage:           s.Storage,
			Replicas:          s.Replicas,
			Retention:         jetstream.LimitsPolicy,
			MaxAge:            s.StatusMaxAge,
			Duplicates:        s.EventDuplicates,
			AllowDirect:       true,
			AllowRollup:       false,
			Discard:           jetstream.DiscardOld,
			MaxMsgsPerSubject: -1,
		},
		{
			Name:        CallbackStream,
			Description: "raw ThingSpace callbacks as received, kept for fan-out and replay",
			Subjects:    []string{CallbackSubject},
			Storage:     s.Storage,
			Replicas:    s.Replicas,
			Retention:   jetstream.LimitsPolicy,
			MaxAge:      s.CallbackMaxAge,
			Duplicates:  s.EventDuplicates,
			Discard:     jetstream.DiscardOld,
		},
		{
			Name:        DeadlineStream,
			Description: "one message per accepted request: when to reconcile devices with no final callback",
			Subjects:    []string{DeadlineSubject},
			Storage:     s.Storage,
			Replicas:    s.Replicas,
			Retention:   jetstream.WorkQueuePolicy,
			MaxAge:      s.RequestTTL,
			Duplicates:  s.EventDuplicates,
			Discard:     jetstream.DiscardOld,
		},
		{
			Name:        DeadLetterStream,
			Description: "commands and callbacks that could not be processed, with the reason",
			Subjects:    []string{DeadLetterSubjects},
			Storage:     s.Storage,
			Replicas:    s.Replicas,
			Retention:   jetstream.LimitsPolicy,
			MaxAge:      s.DeadLetterMaxAge,
			Discard:     jetstream.DiscardOld,
		},
	}
}

// RequestBucketConfig is the requestId -> commands bucket.
func RequestBucketConfig(s StreamSettings) jetstream.KeyValueConfig {
	s.setDefaults()
	return jetstream.KeyValueConfig{
		Bucket:      RequestBucket,
		Description: "requestId -> the commands and devices one ThingSpace call carried",
		TTL:         s.RequestTTL,
		Storage:     s.Storage,
		Replicas:    s.Replicas,
		History:     1,
	}
}

// Ensure creates or updates every stream and the request bucket. Parallel
// identical creates on a fresh cluster can go unanswered
// (nats-io/nats-server#3677), so each is tried again with short attempts
// until it holds or ctx ends.
func Ensure(ctx context.Context, js jetstream.JetStream, s StreamSettings) error {
	for _, cfg := range Streams(s) {
		if err := retry(ctx, func(ctx context.Context) error {
			_, err := js.CreateOrUpdateStream(ctx, cfg)
			return err
		}); err != nil {
			return fmt.Errorf("stream %s: %w", cfg.Name, err)
		}
	}
	kv := RequestBucketConfig(s)
	if err := retry(ctx, func(ctx context.Context) error {
		_, err := js.CreateOrUpdateKeyValue(ctx, kv)
		return err
	}); err != nil {
		return fmt.Errorf("bucket %s: %w", kv.Bucket, err)
	}
	return nil
}

// errNoPeers is JetStream's "no suitable peers for placement".
const errNoPeers = 10005

// Retry runs op with 5-second attempts, backing off up to 2 s between them,
// until it succeeds or ctx ends. For idempotent set-up calls only.
func Retry(ctx context.Context, op func(ctx context.Context) error) error { return retry(ctx, op) }

func retry(ctx context.Context, op func(ctx context.Context) error) error {
	wait := 100 * time.Millisecond
	for {
		actx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := op(actx)
		cancel()
		if err == nil {
			return nil
		}
		var apiErr *jetstream.APIError
		if errors.As(err, &apiErr) && apiErr.Code >= 400 && apiErr.Code < 500 && apiErr.Code != 408 &&
			apiErr.ErrorCode != jetstream.ErrorCode(errNoPeers) {
			// A refused configuration will not fix itself; too few peers
			// (a cluster still forming, a node restarting) will.
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last error: %v)", ctx.Err(), err)
		case <-time.After(wait):
		}
		if wait < 2*time.Second {
			wait *= 2
		}
	}
}
