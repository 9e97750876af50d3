package deploy_test

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"

	"github.com/esim-pipeline/thingspace-esim/internal/broker"
	"github.com/esim-pipeline/thingspace-esim/internal/callback"
	"github.com/esim-pipeline/thingspace-esim/internal/config"
	"github.com/esim-pipeline/thingspace-esim/internal/dispatch"
	"github.com/esim-pipeline/thingspace-esim/internal/esimctl"
	"github.com/esim-pipeline/thingspace-esim/internal/natstest"
	"github.com/esim-pipeline/thingspace-esim/internal/stack"
)

var update = flag.Bool("update", false, "rewrite deploy/jetstream/ from the code")

// replicas of every definition in deploy/jetstream: a three-node cluster.
const replicas = 3

var (
	streamDir   = filepath.Join("jetstream", "streams")
	consumerDir = filepath.Join("jetstream", "consumers")
	kvDir       = filepath.Join("jetstream", "kv")
)

// kvFile is the definition of bucket's backing stream.
func kvFile(bucket string) string {
	return filepath.Join(kvDir, "KV_"+bucket+".json")
}

func consumerFile(stream, durable string) string {
	return filepath.Join(consumerDir, stream, durable+".json")
}

// checkDefinition compares file with want, the code's definition in the
// JetStream API's JSON, field by field; with -update it writes want.
func checkDefinition(t *testing.T, file string, want []byte) {
	t.Helper()
	var pretty bytes.Buffer
	require.NoError(t, json.Indent(&pretty, want, "", "  "))
	pretty.WriteByte('\n')
	if *update {
		require.NoError(t, os.MkdirAll(filepath.Dir(file), 0o755))
		require.NoError(t, os.WriteFile(file, pretty.Bytes(), 0o644))
		return
	}
	got, err := os.ReadFile(file)
	require.NoError(t, err, "deploy/%s is missing: run go test ./deploy -update", file)
	g, w := fields(t, file, got), fields(t, file, want)
	keys := map[string]bool{}
	for k := range g {
		keys[k] = true
	}
	for k := range w {
		keys[k] = true
	}
	var diffs []string
	for k := range keys {
		gv, gok := g[k]
		wv, wok := w[k]
		switch {
		case !gok:
			diffs = append(diffs, fmt.Sprintf("%q: missing from the file, the code has %v", k, wv))
		case !wok:
			diffs = append(diffs, fmt.Sprintf("%q: the file has %v, the code has none", k, gv))
		case !reflect.DeepEqual(gv, wv):
			diffs = append(diffs, fmt.Sprintf("%q: the file has %v, the code has %v", k, gv, wv))
		}
	}
	sort.Strings(diffs)
	require.Empty(t, diffs, "deploy/%s differs from the code; regenerate it with go test ./deploy -update", file)
}

func fields(t *testing.T, file string, b []byte) map[string]any {
	t.Helper()
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	var m map[string]any
	require.NoError(t, d.Decode(&m), file)
	return m
}

// jsonFiles lists the .json files under dir, relative to deploy/.
func jsonFiles(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.HasSuffix(p, ".json") {
			out = append(out, p)
		}
		return err
	})
	require.NoError(t, err)
	sort.Strings(out)
	return out
}

func TestJetStreamStreamsMatchCode(t *testing.T) {
	var want []string
	for _, cfg := range broker.Streams(broker.StreamSettings{Replicas: replicas}) {
		file := filepath.Join(streamDir, cfg.Name+".json")
		want = append(want, file)
		t.Run(cfg.Name, func(t *testing.T) {
			checkDefinition(t, file, apiJSON(t, cfg))
		})
	}
	sort.Strings(want)
	require.Equal(t, want, jsonFiles(t, streamDir), "one file per stream of broker.Streams, no stale ones")
}

// apiTap records the JetStream API requests that create or update streams
// and consumers: the definitions exactly as the services send them.
type apiTap struct {
	mu        sync.Mutex
	streams   map[string][][]byte // stream name -> StreamConfig bodies
	consumers map[string][][]byte // "STREAM/durable" -> ConsumerConfig bodies
}

func tap(t *testing.T, nc *nats.Conn) *apiTap {
	t.Helper()
	a := &apiTap{streams: map[string][][]byte{}, consumers: map[string][][]byte{}}
	for _, subj := range []string{"$JS.API.STREAM.CREATE.*", "$JS.API.STREAM.UPDATE.*"} {
		_, err := nc.Subscribe(subj, func(m *nats.Msg) {
			name := m.Subject[strings.LastIndexByte(m.Subject, '.')+1:]
			a.mu.Lock()
			a.streams[name] = append(a.streams[name], m.Data)
			a.mu.Unlock()
		})
		require.NoError(t, err)
	}
	_, err := nc.Subscribe("$JS.API.CONSUMER.CREATE.>", func(m *nats.Msg) {
		var req struct {
			Stream string          `json:"stream_name"`
			Config json.RawMessage `json:"config"`
		}
		if json.Unmarshal(m.Data, &req) != nil {
			return
		}
		var c jetstream.ConsumerConfig
		if json.Unmarshal(req.Config, &c) != nil {
			return
		}
		a.mu.Lock()
		key := req.Stream + "/" + c.Durable
		a.consumers[key] = append(a.consumers[key], req.Config)
		a.mu.Unlock()
	})
	require.NoError(t, err)
	require.NoError(t, nc.Flush())
	return a
}

func (a *apiTap) get(kind map[string][][]byte, key string) [][]byte {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(kind[key])
}

// wait returns the bodies recorded under key once there is one, or none
// after a few seconds. The tap's subscription hears a request on its own
// connection, so it may hear it after the service got its answer: the
// assertions wait for the recording rather than race it.
func (a *apiTap) wait(t *testing.T, kind map[string][][]byte, key string) [][]byte {
	t.Helper()
	var got [][]byte
	require.Eventually(t, func() bool {
		got = a.get(kind, key)
		return len(got) > 0
	}, 5*time.Second, 10*time.Millisecond, "no request for %s was recorded", key)
	return got
}

// atReplicas re-encodes a StreamConfig or ConsumerConfig body with the
// deployment's replicas.
func atReplicas[T jetstream.StreamConfig | jetstream.ConsumerConfig](t *testing.T, body []byte, set func(*T)) []byte {
	t.Helper()
	var v T
	require.NoError(t, json.Unmarshal(body, &v))
	set(&v)
	return apiJSON(t, v)
}

// apiJSON is v in the JetStream API's JSON, with subjects' ">" written as is.
func apiJSON(t *testing.T, v any) []byte {
	t.Helper()
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	require.NoError(t, enc.Encode(v))
	return b.Bytes()
}

// TestJetStreamDefinitionsMatchServices runs a dispatcher and a
// callback-ingest, with their default settings, against an embedded
// server, records the stream, bucket and consumer definitions they send,
// and compares them (at 3 replicas) with deploy/jetstream.
func TestJetStreamDefinitionsMatchServices(t *testing.T) {
	srv := natstest.Run(t)
	nc := srv.Connect()
	t.Cleanup(nc.Close)
	rec := tap(t, nc)

	env := map[string]string{
		"NATS_URL":                 srv.URL(),
		"STREAM_REPLICAS":          "1",
		"METRICS_ADDR":             "127.0.0.1:0",
		"LISTEN_ADDR":              "127.0.0.1:0",
		"THINGSPACE_BASE_URL":      "http://127.0.0.1:1",
		"THINGSPACE_CLIENT_ID":     "id",
		"THINGSPACE_CLIENT_SECRET": "secret",
		"THINGSPACE_USERNAME":      "user",
		"THINGSPACE_PASSWORD":      "password",
	}
	log := zerolog.Nop()
	var dcfg dispatch.Config
	dset := config.NewSet("dispatcher", io.Discard)
	dcfg.Declare(dset)
	require.NoError(t, dset.Parse(nil, mapEnv(env)))
	var ccfg callback.Config
	cset := config.NewSet("callback-ingest", io.Discard)
	ccfg.Declare(cset)
	require.NoError(t, cset.Parse(nil, mapEnv(env)))

	// Each returns once it is ready: its streams and consumers exist.
	d, err := stack.StartDispatcher(dcfg, log)
	require.NoError(t, err)
	in, err := stack.StartIngest(ccfg, log)
	require.NoError(t, err)
	ctx := context.Background()
	_, js := srv.JetStream()
	wantConsumers := map[string]string{
		broker.DispatcherConsumer:     broker.CommandStream,
		broker.DeadlineConsumer:       broker.DeadlineStream,
		broker.CallbackFanoutConsumer: broker.CallbackStream,
		broker.EIDIndexConsumer:       broker.StatusStream,
	}
	for durable, stream := range wantConsumers {
		_, err := js.Consumer(ctx, stream, durable)
		require.NoError(t, err, "the services create consumer %s", durable)
	}
	require.NoError(t, d.Stop())
	require.NoError(t, in.Stop())

	three := func(v *jetstream.StreamConfig) { v.Replicas = replicas }
	t.Run("the services create the streams as deploy/jetstream/streams defines them", func(t *testing.T) {
		for _, s := range broker.Streams(broker.StreamSettings{}) {
			bodies := rec.wait(t, rec.streams, s.Name)
			require.NotEmpty(t, bodies, "no definition of %s was sent", s.Name)
			for _, b := range bodies {
				if *update {
					break // the streams are written from broker.Streams
				}
				checkDefinition(t, filepath.Join(streamDir, s.Name+".json"), atReplicas(t, b, three))
			}
		}
	})

	// esimctl keeps its runs in a bucket of its own, created at its first run.
	octx, ocancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer ocancel()
	_, err = esimctl.OpenRuns(octx, js, 1)
	require.NoError(t, err)

	for _, bucket := range []string{broker.RequestBucket, broker.EIDBucket, esimctl.RunBucket} {
		t.Run("the backing stream of bucket "+bucket, func(t *testing.T) {
			bodies := rec.wait(t, rec.streams, "KV_"+bucket)
			require.NotEmpty(t, bodies, "the bucket %s was not created", bucket)
			for _, b := range bodies {
				checkDefinition(t, kvFile(bucket), atReplicas(t, b, three))
			}
		})
	}
	require.Equal(t, []string{kvFile(esimctl.RunBucket), kvFile(broker.EIDBucket), kvFile(broker.RequestBucket)}, jsonFiles(t, kvDir), "one file per bucket, no stale ones")

	var want []string
	for durable, stream := range wantConsumers {
		file := consumerFile(stream, durable)
		want = append(want, file)
		t.Run("consumer "+durable, func(t *testing.T) {
			bodies := rec.wait(t, rec.consumers, stream+"/"+durable)
			require.NotEmpty(t, bodies, "consumer %s on %s was not created", durable, stream)
			for _, b := range bodies {
				checkDefinition(t, file, atReplicas(t, b, func(c *jetstream.ConsumerConfig) { c.Replicas = replicas }))
			}
		})
	}
	sort.Strings(want)
	require.Equal(t, want, jsonFiles(t, consumerDir), "one file per consumer, no stale ones")
}

// decodeStrict decodes a definition file, refusing fields the JetStream API
// types do not have.
func decodeStrict(t *testing.T, file string, into any) {
	t.Helper()
	b, err := os.ReadFile(file)
	require.NoError(t, err)
	d := json.NewDecoder(bytes.NewReader(b))
	d.DisallowUnknownFields()
	require.NoError(t, d.Decode(into), file)
}

// TestJetStreamFilesApply creates everything in deploy/jetstream on an
// empty server, as `nats stream add --config` and `nats consumer add
// --config` would (at one replica: the embedded server is alone).
func TestJetStreamFilesApply(t *testing.T) {
	if *update {
		t.Skip("files being rewritten")
	}
	srv := natstest.Run(t)
	_, js := srv.JetStream()
	ctx := context.Background()

	for _, file := range append(jsonFiles(t, streamDir), jsonFiles(t, kvDir)...) {
		var cfg jetstream.StreamConfig
		decodeStrict(t, file, &cfg)
		require.Equal(t, replicas, cfg.Replicas, file)
		require.Equal(t, strings.TrimSuffix(filepath.Base(file), ".json"), cfg.Name, "%s is named after its stream", file)
		cfg.Replicas = 1
		_, err := js.CreateStream(ctx, cfg)
		require.NoError(t, err, "the server refuses %s", file)
	}
	for _, bucket := range []string{broker.RequestBucket, broker.EIDBucket, esimctl.RunBucket} {
		_, err := js.KeyValue(ctx, bucket)
		require.NoError(t, err, "%s makes a usable bucket", kvFile(bucket))
	}

	for _, file := range jsonFiles(t, consumerDir) {
		var cfg jetstream.ConsumerConfig
		decodeStrict(t, file, &cfg)
		require.Equal(t, replicas, cfg.Replicas, file)
		require.Equal(t, strings.TrimSuffix(filepath.Base(file), ".json"), cfg.Durable, "%s is named after its durable", file)
		require.Equal(t, jetstream.AckExplicitPolicy, cfg.AckPolicy, file)
		cfg.Replicas = 1
		_, err := js.CreateConsumer(ctx, filepath.Base(filepath.Dir(file)), cfg)
		require.NoError(t, err, "the server refuses %s", file)
	}
}
