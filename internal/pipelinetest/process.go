package pipelinetest

import (
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// Process is one program a test runs as a process, started again as often
// as the test likes. Every run appends its stdout and stderr to one log
// file in the test's temporary directory; at the test's cleanup the
// process is stopped, and the log's tail is printed when the test failed.
type Process struct {
	Name string

	t           testing.TB
	bin         string
	args, env   []string
	log         string        // file every run appends to
	ready       string        // URL answering 200 once a run is ready ("" for none)
	readyWithin time.Duration // how long Start waits for ready

	mu   sync.Mutex
	cmd  *exec.Cmd // the run Start started, nil once Kill or Stop ended it
	done chan struct{}
}

// newProcess describes a program; Start runs it. env is added to PATH and
// HOME; copyLog, when not empty, is where the log is also written at the
// test's end.
func newProcess(t testing.TB, name, bin string, args, env []string, copyLog string) *Process {
	t.Helper()
	p := &Process{Name: name, t: t, bin: bin, args: args, env: env, log: filepath.Join(t.TempDir(), name+".log")}
	t.Cleanup(func() {
		p.Stop(10 * time.Second)
		if t.Failed() {
			p.dumpTail(40)
		}
		if copyLog != "" {
			_ = os.WriteFile(copyLog, []byte(p.Log()), 0o644)
		}
	})
	return p
}

// Start runs the program (again) and waits until it is ready; it must not
// be running.
func (p *Process) Start() {
	p.t.Helper()
	p.run()
	if p.ready != "" {
		p.WaitReady(p.readyWithin)
	}
}

// run starts a run of the program.
func (p *Process) run() {
	p.t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	require.Nil(p.t, p.cmd, "%s is already running", p.Name)
	f, err := os.OpenFile(p.log, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	require.NoError(p.t, err)
	cmd := exec.Command(p.bin, p.args...)
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME")}, p.env...)
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		_ = f.Close()
		require.NoError(p.t, err, p.Name)
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		_ = f.Close()
		close(done)
	}()
	p.cmd, p.done = cmd, done
}

// WaitReady waits up to within until the program answers ready, failing the
// test if it exits first.
func (p *Process) WaitReady(within time.Duration) {
	p.t.Helper()
	p.WaitHTTP(p.ready, within)
}

// WaitHTTP polls url until it answers 200, failing the test if the program
// exits first or within passes.
func (p *Process) WaitHTTP(url string, within time.Duration) {
	p.t.Helper()
	c := &http.Client{Timeout: time.Second}
	require.Eventually(p.t, func() bool {
		if p.Exited() {
			return true // reported below
		}
		resp, err := c.Get(url)
		if err != nil {
			return false
		}
		_ = resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}, within, 50*time.Millisecond, "%s never answered 200", url)
	require.False(p.t, p.Exited(), "%s exited while starting", p.Name)
}

// Kill sends SIGKILL and waits for the process to be gone; it must be
// running.
func (p *Process) Kill() {
	p.t.Helper()
	cmd, done := p.take()
	require.NotNil(p.t, cmd, "%s is not running", p.Name)
	_ = cmd.Process.Signal(syscall.SIGKILL)
	<-done
}

// Stop sends SIGTERM and waits up to grace, then kills; it does nothing
// when the program is not running.
func (p *Process) Stop(grace time.Duration) {
	cmd, done := p.take()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(grace):
		_ = cmd.Process.Signal(syscall.SIGKILL)
		<-done
	}
}

// take hands the current run to Kill or Stop, which end it.
func (p *Process) take() (*exec.Cmd, chan struct{}) {
	p.mu.Lock()
	defer p.mu.Unlock()
	cmd, done := p.cmd, p.done
	p.cmd = nil
	return cmd, done
}

// Exited reports whether the run Start started has ended by itself (not by
// Kill or Stop).
func (p *Process) Exited() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.done == nil {
		return false
	}
	select {
	case <-p.done:
		return p.cmd != nil
	default:
		return false
	}
}

// Log is everything every run wrote so far.
func (p *Process) Log() string {
	b, _ := os.ReadFile(p.log)
	return string(b)
}

// dumpTail prints the log's warn and error lines (the last n of them) and
// its last n lines: a stop's many info lines would hide why it failed.
func (p *Process) dumpTail(n int) {
	lines := strings.Split(strings.TrimRight(p.Log(), "\n"), "\n")
	var bad []string
	for _, l := range lines {
		if strings.Contains(l, `"level":"warn"`) || strings.Contains(l, `"level":"error"`) {
			bad = append(bad, l)
		}
	}
	last := func(ls []string) string { return strings.Join(ls[max(0, len(ls)-n):], "\n") }
	p.t.Logf("---- warnings and errors of %s (%d, the last %d) ----\n%s", p.Name, len(bad), min(n, len(bad)), last(bad))
	p.t.Logf("---- last lines of %s (%s) ----\n%s", p.Name, p.log, last(lines))
}
