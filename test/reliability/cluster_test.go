package reliability_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/esim-pipeline/thingspace-esim/internal/broker"
	"github.com/esim-pipeline/thingspace-esim/internal/pipelinetest"
	"github.com/esim-pipeline/thingspace-esim/internal/simulator"
)

// cluster is three embedded JetStream servers routed together.
type cluster struct {
	servers map[string]*server.Server
	urls    []string
}

func startCluster(t *testing.T) *cluster {
	t.Helper()
	const size = 3
	client, routes := make([]int, size), make([]string, size)
	for i := range size {
		client[i] = pipelinetest.FreePort(t)
		routes[i] = fmt.Sprintf("nats://127.0.0.1:%d", pipelinetest.FreePort(t))
	}
	c := &cluster{servers: map[string]*server.Server{}}
	for i := range size {
		name := fmt.Sprintf("n%d", i+1)
		rp := strings.TrimPrefix(routes[i], "nats://127.0.0.1:")
		var port int
		_, err := fmt.Sscan(rp, &port)
		require.NoError(t, err)
		s, err := server.NewServer(&server.Options{
			ServerName: name,
			Host:       "127.0.0.1",
			Port:       client[i],
			JetStream:  true,
			StoreDir:   t.TempDir(),
			Cluster:    server.ClusterOpts{Name: "reliability", Host: "127.0.0.1", Port: port},
			Routes:     server.RoutesFromStr(strings.Join(routes, ",")),
			NoLog:      true,
			NoSigs:     true,
		})
		require.NoError(t, err)
		s.Start()
		t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
		c.servers[name] = s
		c.urls = append(c.urls, fmt.Sprintf("nats://127.0.0.1:%d", client[i]))
	}
	for _, s := range c.servers {
		require.True(t, s.ReadyForConnections(10*time.Second))
	}
	return c
}

func (c *cluster) url() string { return strings.Join(c.urls, ",") }

// TestClusterStreamLeaderLoss runs the services with R3 streams on a
// three-node cluster and stops the server leading THINGSPACE_COMMANDS
// while work is under way: nothing is lost and the work goes on.
func TestClusterStreamLeaderLoss(t *testing.T) {
	const n = 3000
	c := startCluster(t)
	_, js := connect(t, c.url())
	require.Eventually(t, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_, err := js.AccountInfo(ctx)
		return err == nil
	}, time.Minute, 100*time.Millisecond, "JetStream meta leader never elected")

	s := startSim(t, simulator.Config{
		ResendInterval: time.Second,
		Faults:         simulator.Faults{RatePerMinute: -1, Latency: 20 * time.Millisecond, CallbackDelay: 100 * time.Millisecond},
	})
	replicas := map[string]string{"STREAM_REPLICAS": "3"}
	ing := newIngest(t, c.url(), replicas)
	ing.Start()
	d := newDispatcher(t, c.url(), s.URL, ing.CallbackURL(), map[string]string{
		"STREAM_REPLICAS": "3", "BATCH_MAX_DEVICES": "100", "THINGSPACE_RATE": "10",
	})
	d.Start()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := js.Stream(ctx, broker.CommandStream)
	require.NoError(t, err)
	info, err := st.Info(ctx)
	require.NoError(t, err)
	require.Equal(t, 3, info.Config.Replicas, "the services create R3 streams")
	events := watchEvents(t, js, false)
	ids := publishCommands(t, js, 4, n)

	require.Eventually(t, func() bool { return s.Stats().ActionAccepted >= 5 }, time.Minute, 5*time.Millisecond)
	info, err = st.Info(ctx)
	require.NoError(t, err)
	require.NotNil(t, info.Cluster)
	leader := info.Cluster.Leader
	require.Contains(t, c.servers, leader)
	atStop := s.Stats()
	c.servers[leader].Shutdown()
	stoppedAt := time.Now()

	// A new leader is elected among the two left.
	var newLeader string
	require.Eventually(t, func() bool {
		ictx, icancel := context.WithTimeout(context.Background(), time.Second)
		defer icancel()
		i, err := st.Info(ictx, jetstream.WithDeletedDetails(false))
		if err != nil || i.Cluster == nil || i.Cluster.Leader == "" || i.Cluster.Leader == leader {
			return false
		}
		newLeader = i.Cluster.Leader
		return true
	}, time.Minute, 100*time.Millisecond, "no new leader of %s", broker.CommandStream)
	elected := time.Since(stoppedAt)
	// Work continues: ThingSpace gets new calls after the stop.
	require.Eventually(t, func() bool { return s.Stats().ActionAccepted > atStop.ActionAccepted+2 }, time.Minute,
		50*time.Millisecond, "no call reached ThingSpace after the leader stopped")

	waitFinal(t, events, ids, 3*time.Minute)
	recovered := time.Since(stoppedAt)
	answered, unanswered := checkCallbacks(t, s, events)
	twice := 0
	subs := submissions(s.Calls())
	for _, id := range ids {
		require.GreaterOrEqual(t, subs[id], 1, "device %s never reached ThingSpace", id)
		if subs[id] > 1 {
			twice++
		}
	}
	require.LessOrEqual(t, twice, 300, "devices submitted twice (bound: MAX_HELD_COMMANDS = 3 batches of 100)")
	require.False(t, ing.Exited() || d.Exited(), "a service exited")
	t.Logf("FIGURE cluster, R3, leader %s of %s stopped after %d devices accepted: new leader %s in %s; "+
		"%d devices submitted twice; %d callbacks answered, %d refused and resent, 0 lost; every command final %s after the stop",
		leader, broker.CommandStream, atStop.DevicesAccept, newLeader, elected.Round(time.Millisecond), twice, answered, unanswered,
		recovered.Round(time.Millisecond))
}
