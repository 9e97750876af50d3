package esimctl_test

import (
	"bytes"
	"context"
	"encoding/csv"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/esim-pipeline/thingspace-esim/internal/broker"
	"github.com/esim-pipeline/thingspace-esim/internal/esimctl"
	"github.com/esim-pipeline/thingspace-esim/internal/natstest"
	"github.com/esim-pipeline/thingspace-esim/internal/pipelinetest"
	"github.com/esim-pipeline/thingspace-esim/internal/simulator"
	"github.com/esim-pipeline/thingspace-esim/internal/testkit"
)

const (
	account = "0000123456-00001"
	smsrOid = "1.3.6.1.4.1.31746.1.500.200.101.5"
)

// stack is the whole pipeline in-process (pipelinetest), and esimctl run
// against it as main would run it.
type stack struct {
	t   *testing.T
	ns  *natstest.Server
	nc  *nats.Conn
	js  jetstream.JetStream
	sim *simulator.Server
	dir string
}

func wrap(t *testing.T, p *pipelinetest.Stack) *stack {
	s := &stack{t: t, ns: p.NATS, nc: p.NC, js: p.JS, dir: t.TempDir()}
	if p.Sim != nil {
		s.sim = p.Sim.Server
	}
	return s
}

// natsOnly is embedded NATS with the pipeline's streams and no services:
// enough to see that nothing gets published.
func natsOnly(t *testing.T) *stack { return wrap(t, pipelinetest.Start(t, pipelinetest.NATSOnly())) }

func newStack(t *testing.T) *stack { return wrap(t, pipelinetest.Start(t)) }

// result is one esimctl invocation.
type result struct {
	code           int
	stdout, stderr string
}

// runID is the id of the `run <id>` line, which must be stderr's first.
func (r result) runID(t *testing.T) string {
	t.Helper()
	first, _, _ := strings.Cut(r.stderr, "\n")
	id, ok := strings.CutPrefix(first, "run ")
	require.True(t, ok, "stderr starts with the run id, got:\n%s", r.stderr)
	require.Len(t, id, 16)
	return id
}

func (s *stack) env(key string) string {
	switch key {
	case "NATS_URL":
		return s.ns.URL()
	case "HOME":
		return s.dir
	}
	return ""
}

// esimctl runs the CLI in-process, as main would, until it returns.
func (s *stack) esimctl(ctx context.Context, args ...string) result {
	s.t.Helper()
	var out, errOut testkit.SyncBuffer
	code := esimctl.Run(ctx, args, s.env, &out, &errOut)
	return result{code: code, stdout: out.String(), stderr: errOut.String()}
}

// start runs the CLI in the background; wait returns its result.
func (s *stack) start(ctx context.Context, args ...string) (stderr *testkit.SyncBuffer, wait func(within time.Duration) result) {
	var out testkit.SyncBuffer
	stderr = &testkit.SyncBuffer{}
	done := make(chan int, 1)
	go func() { done <- esimctl.Run(ctx, args, s.env, &out, stderr) }()
	return stderr, func(within time.Duration) result {
		s.t.Helper()
		select {
		case code := <-done:
			return result{code: code, stdout: out.String(), stderr: stderr.String()}
		case <-time.After(within):
			s.t.Fatalf("esimctl did not return within %s; stderr:\n%s", within, stderr.String())
			return result{}
		}
	}
}

func iccid(n int) string { return fmt.Sprintf("8914800000%010d", n) }
func eid(n int) string   { return fmt.Sprintf("8904903200%022d", n) }

// writeCSV writes rows (header first) to a file in the stack's folder.
func (s *stack) writeCSV(name string, rows [][]string) string {
	s.t.Helper()
	var b bytes.Buffer
	w := csv.NewWriter(&b)
	require.NoError(s.t, w.WriteAll(rows))
	path := filepath.Join(s.dir, name)
	require.NoError(s.t, os.WriteFile(path, b.Bytes(), 0o644))
	return path
}

// readCSV reads a results file.
func readCSV(t *testing.T, path string) [][]string {
	t.Helper()
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	rows, err := csv.NewReader(f).ReadAll()
	require.NoError(t, err)
	return rows
}

// commandsStored counts messages in the command stream.
func (s *stack) commandsStored() uint64 {
	s.t.Helper()
	st, err := s.js.Stream(context.Background(), broker.CommandStream)
	require.NoError(s.t, err)
	info, err := st.Info(context.Background())
	require.NoError(s.t, err)
	return info.State.Msgs
}

// commandsSeen counts every command message published from now on, as a
// core subscriber sees them (duplicates the stream drops included).
func (s *stack) commandsSeen() func() int {
	s.t.Helper()
	var mu sync.Mutex
	n := 0
	sub, err := s.nc.Subscribe("thingspace.profile.commands.>", func(*nats.Msg) { mu.Lock(); n++; mu.Unlock() })
	require.NoError(s.t, err)
	require.NoError(s.t, s.nc.Flush())
	s.t.Cleanup(func() { _ = sub.Unsubscribe() })
	return func() int {
		require.NoError(s.t, s.nc.Flush())
		mu.Lock()
		defer mu.Unlock()
		return n
	}
}
