package broker_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/esim-pipeline/thingspace-esim/internal/broker"
	"github.com/esim-pipeline/thingspace-esim/internal/natstest"
)

// readyWithin is the start-up goal: every service ready this long after the
// cluster has a meta leader.
const readyWithin = 10 * time.Second

// startTogether runs services concurrent start-ups against url, each on its
// own connection, as broker.Ensure plus a consumer and a bucket made with
// broker.Retry (what a dispatcher does), and returns how long the slowest
// took.
func startTogether(t *testing.T, url string, services, replicas int) time.Duration {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	conns := make([]jetstream.JetStream, services)
	for i := range conns {
		nc, err := nats.Connect(url)
		require.NoError(t, err)
		t.Cleanup(nc.Close)
		conns[i], err = jetstream.New(nc)
		require.NoError(t, err)
	}
	settings := broker.StreamSettings{Replicas: replicas}
	took := make([]time.Duration, services)
	phases := make([][3]time.Duration, services) // Ensure, consumer, bucket
	errs := make([]error, services)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i, js := range conns {
		wg.Go(func() {
			<-start
			t0 := time.Now()
			defer func() { took[i] = time.Since(t0) }()
			if err := broker.Ensure(ctx, js, settings); err != nil {
				errs[i] = err
				return
			}
			phases[i][0] = time.Since(t0)
			errs[i] = broker.Retry(ctx, func(ctx context.Context) error {
				_, err := js.CreateOrUpdateConsumer(ctx, broker.CommandStream, jetstream.ConsumerConfig{
					Durable:   broker.DispatcherConsumer,
					AckPolicy: jetstream.AckExplicitPolicy,
					Replicas:  replicas,
				})
				return err
			})
			if errs[i] != nil {
				return
			}
			phases[i][1] = time.Since(t0)
			errs[i] = broker.Retry(ctx, func(ctx context.Context) error {
				_, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "ratelimit_test", Replicas: replicas})
				return err
			})
			phases[i][2] = time.Since(t0)
		})
	}
	close(start)
	wg.Wait()
	var slowest time.Duration
	for i := range services {
		require.NoError(t, errs[i], "service %d", i)
		t.Logf("service %d ready after %s (streams and bucket %s, consumer %s, CreateOrUpdateKeyValue bucket %s)", i,
			took[i].Round(time.Millisecond), phases[i][0].Round(time.Millisecond),
			(phases[i][1] - phases[i][0]).Round(time.Millisecond), (phases[i][2] - phases[i][1]).Round(time.Millisecond))
		slowest = max(slowest, took[i])
	}
	return slowest
}

func TestServicesStartingTogetherOnAFreshClusterAreReadyWithinSeconds(t *testing.T) {
	if testing.Short() {
		t.Skip("starts JetStream clusters")
	}
	for _, tc := range []struct {
		name               string
		replicas, services int
	}{
		{"three replicas, a dispatcher and an ingest", 3, 2},
		{"three replicas, six services", 3, 6},
		{"one replica, six services", 1, 6},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := natstest.RunCluster(t, 3)
			took := startTogether(t, c.URL(), tc.services, tc.replicas)
			t.Logf("%d services, R%d: all ready %s after the cluster had a meta leader", tc.services, tc.replicas, took.Round(time.Millisecond))
			require.Less(t, took, readyWithin, fmt.Sprintf("the goal is ready within %s", readyWithin))
		})
	}
}

func TestEnsureOnStreamsThatExistKeepsThemAndBringsChangedOnesUpToDate(t *testing.T) {
	srv := natstest.Run(t)
	_, js := srv.JetStream()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	settings := broker.StreamSettings{}
	require.NoError(t, broker.Ensure(ctx, js, settings))
	_, err := js.Publish(ctx, "thingspace.profile.commands.enable", []byte(`{}`))
	require.NoError(t, err)

	old := broker.Streams(settings)[0]
	old.MaxAge = time.Hour // an older release's definition
	_, err = js.UpdateStream(ctx, old)
	require.NoError(t, err)
	bucket := broker.RequestBucketConfig(settings)
	bucket.TTL = time.Hour
	_, err = js.UpdateKeyValue(ctx, bucket)
	require.NoError(t, err)

	require.NoError(t, broker.Ensure(ctx, js, settings), "a second start")
	s, err := js.Stream(ctx, broker.CommandStream)
	require.NoError(t, err)
	require.Equal(t, broker.Streams(settings)[0].MaxAge, s.CachedInfo().Config.MaxAge, "the changed definition is applied")
	require.EqualValues(t, 1, s.CachedInfo().State.Msgs, "and the stream keeps its messages")
	kv, err := js.KeyValue(ctx, broker.RequestBucket)
	require.NoError(t, err)
	st, err := kv.Status(ctx)
	require.NoError(t, err)
	require.Equal(t, broker.RequestBucketConfig(settings).TTL, st.TTL(), "the bucket too")
}

func TestEnsureRefusedByTheServerFailsAtOnceNamingTheStream(t *testing.T) {
	srv := natstest.Run(t)
	_, js := srv.JetStream()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// Another stream already captures the status subjects.
	_, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "SOMEONE_ELSE", Subjects: []string{broker.StatusSubjects}})
	require.NoError(t, err)
	t0 := time.Now()
	err = broker.Ensure(ctx, js, broker.StreamSettings{})
	require.ErrorContains(t, err, "stream "+broker.StatusStream)
	require.Less(t, time.Since(t0), 5*time.Second, "a refusal is not retried")
}
