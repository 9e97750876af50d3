package natstest

import (
	"fmt"
	"net"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// Cluster is a JetStream cluster of embedded servers in one test process.
type Cluster struct {
	t       testing.TB
	Servers []*Server
}

// freePort asks the kernel for a free loopback port.
func freePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("natstest: free port: %v", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// RunCluster starts n servers that form one JetStream cluster and waits
// until it has a meta leader and every server is current with it.
func RunCluster(t testing.TB, n int) *Cluster {
	t.Helper()
	routes := make([]int, n)
	for i := range routes {
		routes[i] = freePort(t)
	}
	var urls []*url.URL
	for _, p := range routes {
		u, _ := url.Parse(fmt.Sprintf("nats-route://127.0.0.1:%d", p))
		urls = append(urls, u)
	}
	c := &Cluster{t: t}
	for i := range n {
		s := &Server{t: t, opts: server.Options{
			ServerName: fmt.Sprintf("n%d", i+1),
			Host:       "127.0.0.1",
			Port:       freePort(t),
			JetStream:  true,
			StoreDir:   t.TempDir(),
			NoLog:      true,
			NoSigs:     true,
			Cluster: server.ClusterOpts{
				Name: "test",
				Host: "127.0.0.1",
				Port: routes[i],
			},
			Routes: urls,
		}}
		c.Servers = append(c.Servers, s)
	}
	// Start them together: each waits for the others to form the meta group.
	done := make(chan struct{}, n)
	for _, s := range c.Servers {
		go func() {
			srv, err := server.NewServer(&s.opts)
			if err != nil {
				t.Errorf("natstest: new server: %v", err)
				done <- struct{}{}
				return
			}
			srv.Start()
			s.srv = srv
			done <- struct{}{}
		}()
	}
	for range n {
		<-done
	}
	for _, s := range c.Servers {
		if s.srv == nil || !s.srv.ReadyForConnections(10*time.Second) {
			t.Fatalf("natstest: cluster server not ready")
		}
		t.Cleanup(s.Shutdown)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		// Ready once the meta leader has every peer's stats: placing an
		// R3 stream before that fails with "no suitable peers for placement".
		peers, current := 0, 0
		for _, s := range c.Servers {
			if s.srv.JetStreamIsLeader() {
				peers = len(s.srv.JetStreamClusterPeers())
			}
			if s.srv.JetStreamIsCurrent() {
				current++
			}
		}
		if peers == n && current == n {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("natstest: JetStream cluster not formed: %d of %d peers known to the meta leader, %d current", peers, n, current)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return c
}

// URL lists every server's client URL, comma-separated, as NATS_URL does.
func (c *Cluster) URL() string {
	var us []string
	for _, s := range c.Servers {
		us = append(us, s.URL())
	}
	return strings.Join(us, ",")
}
