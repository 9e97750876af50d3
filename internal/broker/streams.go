package broker

import (
	"context"
	"errors"
	"fmt"
	"sync"
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
	EIDBucket              = "thingspace_eids"
	EIDIndexConsumer       = "eid-index"
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
			Name:        StatusStream,
			Description: "per-device status events, history kept",
			Subjects:    []string{StatusSubjects},
			Storage:     s.Storage,
			Replicas:    s.Replicas,
			Retention:   jetstream.LimitsPolicy,
			MaxAge:      s.StatusMaxAge,
			Duplicates:  s.EventDuplicates,
			AllowDirect: true,
			AllowRollup: false,
			// The dispatcher stores its events in atomic batches: one
			// commit, one fsync under sync always (BENCHMARKS.md lesson 15).
			AllowAtomicPublish: true,
			Discard:            jetstream.DiscardOld,
			MaxMsgsPerSubject:  -1,
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

// EIDBucketConfig is the EID index: one key <eid>.<id> for each subject id
// (an ICCID) under which a status event naming the EID was filed. Keys
// outlive the status history they point at: the ingest writes a key again
// when it meets it a day after it last wrote it (EIDIndexRefresh), and the
// bucket keeps keys one refresh longer than the status stream keeps events.
func EIDBucketConfig(s StreamSettings) jetstream.KeyValueConfig {
	s.setDefaults()
	return jetstream.KeyValueConfig{
		Bucket:      EIDBucket,
		Description: "EID index: <eid>.<id> for every status subject id (an ICCID) whose events named the EID",
		TTL:         s.StatusMaxAge + EIDIndexRefresh,
		Storage:     s.Storage,
		Replicas:    s.Replicas,
		History:     1,
	}
}

// EIDIndexRefresh is how long an index key written stays trusted by its
// writer before it writes the key again, renewing its age.
const EIDIndexRefresh = 24 * time.Hour

// EnsureBucket creates or updates the bucket cfg, tried again as [Ensure]
// tries its definitions, until it holds or ctx ends.
func EnsureBucket(ctx context.Context, js jetstream.JetStream, cfg jetstream.KeyValueConfig) error {
	if err := retry(ctx, func(ctx context.Context) error { return createOrUpdateBucket(ctx, js, cfg) }); err != nil {
		return fmt.Errorf("bucket %s: %w", cfg.Bucket, err)
	}
	return nil
}

// Ensure creates or updates every stream and the request bucket, all at
// once, each tried again with short attempts until it holds or ctx ends.
//
// Each definition is sent as a create first and as an update only when the
// server says the stream exists with another configuration. The other order
// (nats.go's CreateOrUpdateStream asks for an update first) is what stalls a
// fresh cluster when services start together: an update that reaches the
// meta leader while another service's create of the same stream is still
// being applied goes unanswered (the nats-io/nats-server#3677 family), and
// so does that create, each costing its caller a whole attempt. Identical
// creates, however many arrive together, are all answered. See
// TestServicesStartingTogetherOnAFreshClusterAreReadyWithinSeconds.
func Ensure(ctx context.Context, js jetstream.JetStream, s StreamSettings) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		first error
	)
	do := func(what string, op func(ctx context.Context) error) {
		wg.Go(func() {
			if err := retry(ctx, op); err != nil {
				mu.Lock()
				if first == nil {
					first = fmt.Errorf("%s: %w", what, err)
					cancel() // a refused definition: the others need not go on
				}
				mu.Unlock()
			}
		})
	}
	for _, cfg := range Streams(s) {
		do("stream "+cfg.Name, func(ctx context.Context) error { return createOrUpdateStream(ctx, js, cfg) })
	}
	kv := RequestBucketConfig(s)
	do("bucket "+kv.Bucket, func(ctx context.Context) error { return createOrUpdateBucket(ctx, js, kv) })
	wg.Wait()
	return first
}

// createOrUpdateStream creates cfg's stream, or updates it when it exists
// with another configuration (an identical create succeeds as it is).
func createOrUpdateStream(ctx context.Context, js jetstream.JetStream, cfg jetstream.StreamConfig) error {
	_, err := js.CreateStream(ctx, cfg)
	if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
		_, err = js.UpdateStream(ctx, cfg)
	}
	return err
}

// createOrUpdateBucket is createOrUpdateStream for a key-value bucket.
func createOrUpdateBucket(ctx context.Context, js jetstream.JetStream, cfg jetstream.KeyValueConfig) error {
	_, err := js.CreateKeyValue(ctx, cfg)
	if errors.Is(err, jetstream.ErrBucketExists) {
		_, err = js.UpdateKeyValue(ctx, cfg)
	}
	return err
}

// errNoPeers is JetStream's "no suitable peers for placement".
const errNoPeers = 10005

// Attempts of retry: the first is short, since a set-up call on a healthy
// server is answered in milliseconds and one that goes unanswered should
// cost little; each attempt that times out doubles the next one's budget,
// up to the longest, so a slow server still gets time to answer.
const (
	firstAttempt   = 500 * time.Millisecond
	longestAttempt = 5 * time.Second
)

// Retry runs op with attempts of 500 ms growing to 5 s (each time one runs
// out), backing off up to 2 s after an error answer, until op succeeds,
// fails in a way that will not change (a refused configuration), or ctx
// ends. For idempotent set-up calls only.
func Retry(ctx context.Context, op func(ctx context.Context) error) error { return retry(ctx, op) }

func retry(ctx context.Context, op func(ctx context.Context) error) error {
	wait := 100 * time.Millisecond
	budget := firstAttempt
	for {
		actx, cancel := context.WithTimeout(ctx, budget)
		err := op(actx)
		timedOut := actx.Err() != nil
		cancel()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("%w (last error: %v)", ctx.Err(), err)
		}
		var apiErr *jetstream.APIError
		if errors.As(err, &apiErr) && apiErr.Code >= 400 && apiErr.Code < 500 && apiErr.Code != 408 &&
			apiErr.ErrorCode != jetstream.ErrorCode(errNoPeers) {
			// A refused configuration will not fix itself; too few peers
			// (a cluster still forming, a node restarting) will.
			return err
		}
		pause := wait
		if timedOut {
			// Unanswered: the attempt already waited; ask again at once
			// with more time.
			budget = min(2*budget, longestAttempt)
			pause = 0
		} else if wait < 2*time.Second {
			wait *= 2
		}
		if pause > 0 {
			t := time.NewTimer(pause)
			select {
			case <-ctx.Done():
				t.Stop()
				return fmt.Errorf("%w (last error: %v)", ctx.Err(), err)
			case <-t.C:
			}
		}
	}
}
