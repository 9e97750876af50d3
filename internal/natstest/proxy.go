package natstest

import (
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/Shopify/toxiproxy/v2"
	"github.com/Shopify/toxiproxy/v2/collectors"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

// Proxy is a TCP proxy in this process (toxiproxy) in front of a server,
// for a connection that is slow or cut.
type Proxy struct {
	t *testing.T
	p *toxiproxy.Proxy
}

// NewProxy starts a proxy to the server at url (nats://host:port) and
// stops it when the test ends.
func NewProxy(t *testing.T, url string) *Proxy {
	t.Helper()
	srv := toxiproxy.NewServer(toxiproxy.NewMetricsContainer(prometheus.NewRegistry()), zerolog.Nop())
	srv.Metrics.ProxyMetrics = collectors.NewProxyMetricCollectors()
	p := toxiproxy.NewProxy(srv, "nats", "127.0.0.1:0", strings.TrimPrefix(url, "nats://"))
	if err := p.Start(); err != nil {
		t.Fatalf("natstest: proxy: %v", err)
	}
	t.Cleanup(p.Stop)
	return &Proxy{t: t, p: p}
}

// URL is the proxy's client URL.
func (p *Proxy) URL() string { return "nats://" + p.p.Listen }

// Slow delays everything the server sends through the proxy by latency.
func (p *Proxy) Slow(latencyMs int) {
	p.t.Helper()
	_, err := p.p.Toxics.AddToxicJson(strings.NewReader(
		`{"name":"latency","type":"latency","stream":"downstream","toxicity":1,"attributes":{"latency":` + strconv.Itoa(latencyMs) + `}}`))
	if err != nil {
		p.t.Fatalf("natstest: latency: %v", err)
	}
}

// JetStream opens a client connection through the proxy and its JetStream
// context, closed at the test's cleanup.
func (p *Proxy) JetStream() jetstream.JetStream {
	p.t.Helper()
	nc, err := nats.Connect(p.URL(), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		p.t.Fatalf("natstest: connect through the proxy: %v", err)
	}
	p.t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		p.t.Fatalf("natstest: jetstream: %v", err)
	}
	return js
}
