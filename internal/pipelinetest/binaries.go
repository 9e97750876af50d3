package pipelinetest

// The built-binaries mode: nats-server, the callback-ingest and the
// dispatcher as real processes, built once per test binary, for tests that
// kill them (SIGKILL, SIGTERM) and read their logs. The simulator stays in
// the test's process (stack.StartSimulator).

import (
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

const module = "github.com/esim-pipeline/thingspace-esim"

// How long Start waits for a program to be ready.
const (
	natsReadyWithin    = 30 * time.Second
	serviceReadyWithin = time.Minute
)

// Binaries are the programs BuildBinaries built.
type Binaries struct {
	NATS, Dispatcher, Ingest string // paths
	// LogCopies, when not empty, makes every process also write its log, at
	// its test's end, to LogCopies+name+".log" (a later test's overwrites
	// it).
	LogCopies string
	dir       string
}

// BuildBinaries builds, in parallel, the nats-server go.mod pins and this
// checkout's cmd/dispatcher and cmd/callback-ingest into a new temporary
// directory, which Remove deletes. A TestMain calls it once, and Remove
// after m.Run.
func BuildBinaries() (*Binaries, error) {
	dir, err := os.MkdirTemp("", "pipelinetest-bin-")
	if err != nil {
		return nil, err
	}
	b := &Binaries{
		NATS:       filepath.Join(dir, "nats-server"),
		Dispatcher: filepath.Join(dir, "dispatcher"),
		Ingest:     filepath.Join(dir, "callback-ingest"),
		dir:        dir,
	}
	var wg sync.WaitGroup
	errs := make([]error, 3)
	for i, p := range []struct{ out, pkg string }{
		{b.NATS, "github.com/nats-io/nats-server/v2"},
		{b.Dispatcher, module + "/cmd/dispatcher"},
		{b.Ingest, module + "/cmd/callback-ingest"},
	} {
		wg.Go(func() {
			out, err := exec.Command("go", "build", "-o", p.out, p.pkg).CombinedOutput()
			if err != nil {
				errs[i] = fmt.Errorf("go build %s: %w\n%s", p.pkg, err, out)
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		_ = os.RemoveAll(dir)
		return nil, err
	}
	return b, nil
}

// Remove deletes the built programs.
func (b *Binaries) Remove() error { return os.RemoveAll(b.dir) }

// process describes a run of bin with env; the caller sets its readiness.
func (b *Binaries) process(t testing.TB, name, bin string, args []string, env map[string]string) *Process {
	t.Helper()
	copyLog := ""
	if b.LogCopies != "" {
		copyLog = b.LogCopies + name + ".log"
	}
	list := make([]string, 0, len(env))
	for _, k := range slices.Sorted(maps.Keys(env)) {
		list = append(list, k+"="+env[k])
	}
	return newProcess(t, name, bin, args, list, copyLog)
}

// FreePort picks a loopback port nobody listens on now.
func FreePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err, "free port")
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func loopback(port int) string { return "127.0.0.1:" + strconv.Itoa(port) }

// NATSProcess is a nats-server process with JetStream on ports and a store
// directory that every run keeps: one started after Kill finds what the
// killed one stored.
type NATSProcess struct {
	*Process
	Port, MonitorPort int
}

// StartNATS starts a nats-server process and waits until JetStream is up;
// Start does so again.
func (b *Binaries) StartNATS(t testing.TB) *NATSProcess {
	t.Helper()
	n := &NATSProcess{Port: FreePort(t), MonitorPort: FreePort(t)}
	n.Process = b.process(t, "nats-server", b.NATS, []string{
		"-a", "127.0.0.1", "-p", strconv.Itoa(n.Port), "-m", strconv.Itoa(n.MonitorPort),
		"-js", "-sd", t.TempDir(), "-n", "pipelinetest",
	}, nil)
	n.ready, n.readyWithin = n.MonitorURL()+"/healthz?js-enabled-only=true", natsReadyWithin
	n.Start()
	return n
}

// URL is the client URL, as NATS_URL takes it.
func (n *NATSProcess) URL() string { return "nats://" + loopback(n.Port) }

// MonitorURL is the root of the HTTP monitoring endpoints (/connz, ...).
func (n *NATSProcess) MonitorURL() string { return "http://" + loopback(n.MonitorPort) }

// Service is a callback-ingest or dispatcher process; Start waits for its
// admin listener's /readyz.
type Service struct {
	*Process
	// ListenAddr is the ingest's callback listener (LISTEN_ADDR; empty for
	// a dispatcher), AdminAddr the admin listener (METRICS_ADDR).
	ListenAddr, AdminAddr string
}

// NewIngest describes a callback-ingest process of the settings env;
// LISTEN_ADDR and METRICS_ADDR, unless env sets them, are free loopback
// ports that every run keeps. Start runs it.
func (b *Binaries) NewIngest(t testing.TB, env map[string]string) *Service {
	t.Helper()
	env = withAddrs(t, env, "LISTEN_ADDR", "METRICS_ADDR")
	return b.service(t, "callback-ingest", b.Ingest, env, env["LISTEN_ADDR"])
}

// NewDispatcher describes a dispatcher process of the settings env;
// METRICS_ADDR, unless env sets it, is a free loopback port that every run
// keeps. Start runs it.
func (b *Binaries) NewDispatcher(t testing.TB, env map[string]string) *Service {
	t.Helper()
	return b.service(t, "dispatcher", b.Dispatcher, withAddrs(t, env, "METRICS_ADDR"), "")
}

func (b *Binaries) service(t testing.TB, name, bin string, env map[string]string, listen string) *Service {
	t.Helper()
	s := &Service{Process: b.process(t, name, bin, nil, env), ListenAddr: listen, AdminAddr: env["METRICS_ADDR"]}
	s.ready, s.readyWithin = s.AdminURL()+"/readyz", serviceReadyWithin
	return s
}

// withAddrs is a copy of env with a free loopback address for each of keys
// it does not set.
func withAddrs(t testing.TB, env map[string]string, keys ...string) map[string]string {
	t.Helper()
	out := maps.Clone(env)
	if out == nil {
		out = map[string]string{}
	}
	for _, k := range keys {
		if out[k] == "" {
			out[k] = loopback(FreePort(t))
		}
	}
	return out
}

// CallbackURL is where ThingSpace posts to this ingest.
func (s *Service) CallbackURL() string { return "http://" + s.ListenAddr + "/callbacks" }

// AdminURL is the root of the admin listener (/readyz, /metrics, ...).
func (s *Service) AdminURL() string { return "http://" + s.AdminAddr }
