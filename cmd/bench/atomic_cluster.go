package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/esim-pipeline/thingspace-esim/internal/broker"
)

// cluster is three nats-server processes with routes between them.
type cluster struct {
	servers []*natsServer
	names   []string
	dirs    []string
}

func (c *cluster) stop() {
	for _, s := range c.servers {
		s.stop(30 * time.Second)
	}
}

func (c *cluster) pids() map[string]int {
	m := map[string]int{}
	for i, s := range c.servers {
		m["nats-server "+c.names[i]] = s.pid()
	}
	return m
}

// freePorts reserves n loopback ports and releases them for the servers.
func freePorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// clusterFor starts n servers forming one JetStream cluster on fresh
// directories, creates the streams with replicas R = n, lets the status
// stream take batches, and waits until its leader and every replica are
// current.
func (b *bench) clusterFor(ctx context.Context, name string, n int, o natsOptions) (*cluster, error) {
	root, err := b.runDir(name)
	if err != nil {
		return nil, err
	}
	b.settle()
	ports, err := freePorts(n)
	if err != nil {
		return nil, err
	}
	routes := make([]string, n)
	for i, p := range ports {
		routes[i] = fmt.Sprintf("nats-route://127.0.0.1:%d", p)
	}
	c := &cluster{}
	for i := range n {
		nodeName := fmt.Sprintf("n%d", i+1)
		dir := filepath.Join(root, nodeName)
		store := filepath.Join(dir, "store")
		if err := os.MkdirAll(store, 0o755); err != nil {
			c.stop()
			return nil, err
		}
		conf := fmt.Sprintf("server_name: %s\nhost: 127.0.0.1\nport: -1\nports_file_dir: %q\nmax_payload: 8MB\n", nodeName, dir)
		conf += fmt.Sprintf("cluster {\n  name: bench\n  host: 127.0.0.1\n  port: %d\n  routes: [%s]\n}\n", ports[i], strings.Join(routes, ", "))
		conf += o.jetStreamBlock(store)
		ns, err := launchNATS(ctx, b.natsBin, dir, conf, false)
		if err != nil {
			c.stop()
			return nil, fmt.Errorf("%s: %w", nodeName, err)
		}
		c.servers, c.names, c.dirs = append(c.servers, ns), append(c.names, nodeName), append(c.dirs, dir)
	}
	nc, js, err := connect(c.servers[0].url)
	if err != nil {
		c.stop()
		return nil, err
	}
	defer nc.Close()
	sctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	if err := broker.Retry(sctx, func(ctx context.Context) error { _, err := js.AccountInfo(ctx); return err }); err != nil {
		c.stop()
		return nil, fmt.Errorf("cluster JetStream: %w", err)
	}
	if err := broker.Ensure(sctx, js, broker.StreamSettings{Replicas: n}); err != nil {
		c.stop()
		return nil, err
	}
	if err := enableBatches(sctx, js); err != nil {
		c.stop()
		return nil, err
	}
	if _, err := c.statusLeader(sctx, js, n); err != nil {
		c.stop()
		return nil, err
	}
	return c, nil
}

// statusLeader waits until the status stream has a leader and n-1 current
// replicas, and returns the leader's index.
func (c *cluster) statusLeader(ctx context.Context, js jetstream.JetStream, n int) (int, error) {
	for {
		ictx, cancel := context.WithTimeout(ctx, 2*time.Second)
		st, err := js.Stream(ictx, broker.StatusStream)
		var info *jetstream.StreamInfo
		if err == nil {
			info, err = st.Info(ictx)
		}
		cancel()
		if err == nil && info.Cluster != nil && info.Cluster.Leader != "" {
			current := 0
			for _, p := range info.Cluster.Replicas {
				if p.Current {
					current++
				}
			}
			for i, nm := range c.names {
				if nm == info.Cluster.Leader && current == n-1 {
					return i, nil
				}
			}
		}
		select {
		case <-ctx.Done():
			return 0, errors.New("status stream: no leader with current replicas")
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// measureAtomicCluster runs the store variants on three nodes, R3, sync
// always, the client on a follower of the status stream (two times in
// three a service's connection is); a fresh cluster for every run.
func (b *bench) measureAtomicCluster(ctx context.Context, rep *report) error {
	keys := b.s.atomicVariants
	if keys == "" {
		keys = defaultClusterVariants
	}
	vs, err := parseVariants(keys, allStoreVariants)
	if err != nil {
		return err
	}
	const n = 3
	var errs []error
	runs := map[string][]storeRun{}
	for i := range b.s.rounds {
		for _, v := range vs {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			name := fmt.Sprintf("atomic-r3-%s-%d", v.key, i+1)
			r, err := b.clusterRunOne(ctx, name, v, n, natsOptions{syncAlways: true, batchMaxMsgs: v.maxBatch}, rep, i == 0 && v.key == vs[0].key)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", name, err))
				continue
			}
			runs[v.key] = append(runs[v.key], r)
			rep.runs = append(rep.runs, r.info("A R3 always: "+v.key+b.roundLabel(i), n))
		}
	}
	rep.notes = append(rep.notes, storeTable("Three nodes, R3, sync always (client on a follower of the status stream)", vs, runs))
	return joinErrs(errs)
}

func (b *bench) clusterRunOne(ctx context.Context, name string, v storeVariant, n int, o natsOptions, rep *report, semantics bool) (storeRun, error) {
	c, err := b.clusterFor(ctx, name, n, o)
	if err != nil {
		return storeRun{}, err
	}
	defer func() {
		c.stop()
		if !b.s.keep {
			for _, d := range c.dirs {
				_ = os.RemoveAll(filepath.Join(d, "store"))
			}
		}
	}()
	nc0, js0, err := connect(c.servers[0].url)
	if err != nil {
		return storeRun{}, err
	}
	leader, err := c.statusLeader(ctx, js0, n)
	nc0.Close()
	if err != nil {
		return storeRun{}, err
	}
	follower := (leader + 1) % n
	nc, js, err := connect(c.servers[follower].url, jetstream.WithPublishAsyncMaxPending(4096), jetstream.WithPublishAsyncTimeout(10*time.Second))
	if err != nil {
		return storeRun{}, err
	}
	defer nc.Close()
	if semantics {
		lines := b.semanticsChecks(ctx, js, false)
		rep.notes = append(rep.notes, "Atomic batch duplicates on three nodes, R3, sync always:\n\n"+strings.Join(lines, "\n"))
	}
	r := b.storeEvents(ctx, js, v, b.s.atomicWindow, c.pids())
	b.logStoreRun(name, r)
	return r, nil
}
