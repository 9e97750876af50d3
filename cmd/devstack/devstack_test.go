package main_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// readmeExample returns the command lines between the devstack-example
// markers of the README: what a newcomer copies.
func readmeExample(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile("../../README.md")
	require.NoError(t, err)
	s := string(b)
	start := strings.Index(s, "<!-- devstack-example:start -->")
	end := strings.Index(s, "<!-- devstack-example:end -->")
	require.True(t, start >= 0 && end > start, "README has the devstack example block")
	var lines []string
	for _, l := range strings.Split(s[start:end], "\n") {
		l = strings.TrimSpace(l)
		if l == "" || strings.HasPrefix(l, "<!--") || strings.HasPrefix(l, "```") {
			continue
		}
		lines = append(lines, l)
	}
	require.Len(t, lines, 3, "watch, publish, metrics")
	return lines
}

func portFree(addr string) bool {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return false
	}
	_ = ln.Close()
	return true
}

// TestReadmeExampleOnTheDevStack starts the dev stack as the README says
// (its fixed ports, so the printed commands work with no flags), runs the
// README's lines with the real NATS CLI, sees the described events, and
// stops it with SIGINT.
func TestReadmeExampleOnTheDevStack(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the NATS CLI and the dev stack")
	}
	for _, addr := range []string{"127.0.0.1:4222", "127.0.0.1:8090", "127.0.0.1:8080", "127.0.0.1:9090", "127.0.0.1:9091"} {
		if !portFree(addr) {
			t.Skipf("%s is in use; the dev stack needs its documented ports", addr)
		}
	}
	lines := readmeExample(t)
	watch, pub, metrics := lines[0], lines[1], lines[2]
	require.Contains(t, pub, " pub thingspace.profile.commands.enable ")

	dir := t.TempDir()
	bin := filepath.Join(dir, "devstack")
	build := exec.Command("go", "build", "-o", bin, ".")
	build.Stderr = os.Stderr
	require.NoError(t, build.Run())
	// Build the pinned CLI before the clock starts: the README's `go run` then hits the cache.
	warm := exec.Command("go", "run", "github.com/nats-io/natscli/nats@v0.5.0", "--version")
	warm.Dir = dir
	out, err := warm.CombinedOutput()
	require.NoError(t, err, "building the pinned NATS CLI: %s", out)

	stack := exec.Command(bin, "--data", filepath.Join(dir, "data"))
	stdout, err := stack.StdoutPipe()
	require.NoError(t, err)
	stack.Stderr = os.Stderr
	require.NoError(t, stack.Start())
	t.Cleanup(func() { _ = stack.Process.Kill(); _ = stack.Wait() })

	banner := make(chan string, 100)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			banner <- sc.Text()
		}
		close(banner)
	}()
	var printed strings.Builder
	waitFor := func(want string, within time.Duration) {
		t.Helper()
		deadline := time.After(within)
		for {
			select {
			case l, ok := <-banner:
				require.True(t, ok, "dev stack ended early:\n%s", printed.String())
				printed.WriteString(l + "\n")
				if strings.Contains(l, want) {
					return
				}
			case <-deadline:
				t.Fatalf("no %q within %s:\n%s", want, within, printed.String())
			}
		}
	}
	waitFor("Ctrl-C stops everything", 60*time.Second)
	for _, l := range lines {
		require.Contains(t, printed.String(), l, "the banner prints the README's line")
	}

	shell := func(ctx context.Context, line string) *exec.Cmd {
		c := exec.CommandContext(ctx, "bash", "-c", line)
		c.Dir = "../.."
		return c
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	pubOut, err := shell(ctx, pub).CombinedOutput()
	require.NoError(t, err, "%s", pubOut)

	// The watch line follows the stream; read until both events came.
	sub := shell(ctx, watch)
	subOut, err := sub.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, sub.Start())
	defer func() { _ = sub.Process.Kill(); _ = sub.Wait() }()
	seen := map[string]bool{}
	sc := bufio.NewScanner(subOut)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() && !(seen["accepted"] && seen["succeeded"]) {
		l := strings.TrimSpace(sc.Text())
		if !strings.HasPrefix(l, "{") {
			continue
		}
		var ev struct {
			Status string `json:"status"`
			Final  bool   `json:"final"`
			Device struct {
				ICCID string `json:"iccid"`
			} `json:"device"`
		}
		require.NoError(t, json.Unmarshal([]byte(l), &ev), l)
		require.Equal(t, "89148000000000000001", ev.Device.ICCID)
		seen[ev.Status] = true
		if ev.Status == "succeeded" {
			require.True(t, ev.Final)
		}
	}
	require.True(t, seen["accepted"] && seen["succeeded"], "accepted then succeeded, as the README says: %v", seen)

	metricsOut, err := shell(ctx, metrics).CombinedOutput()
	require.NoError(t, err, "%s", metricsOut)
	require.Contains(t, string(metricsOut), `esim_dispatcher_devices_total{status="accepted"} 1`)

	require.NoError(t, stack.Process.Signal(syscall.SIGINT))
	waitFor("devstack: stopped", 30*time.Second)
	require.NoError(t, stack.Wait(), "Ctrl-C is a clean exit")
}

// freeAddr is a loopback address nothing listens on.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	return ln.Addr().String()
}

// TestMakeDevEndsQuietlyOnCtrlC runs `make dev` as a terminal would (its own
// process group, which Ctrl-C signals as a whole) and checks that the stack
// stops cleanly and make reports nothing: exit 0, no "make: ***" line.
func TestMakeDevEndsQuietlyOnCtrlC(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the dev stack through make")
	}
	if _, err := exec.LookPath("make"); err != nil {
		t.Skip("no make on this machine")
	}
	_, natsPort, err := net.SplitHostPort(freeAddr(t))
	require.NoError(t, err)
	mk := exec.Command("make", "--no-print-directory", "dev")
	mk.Dir = "../.."
	mk.Env = append(os.Environ(),
		"DEVSTACK_DATA="+t.TempDir(),
		"DEVSTACK_NATS_PORT="+natsPort,
		"DEVSTACK_SIM_ADDR="+freeAddr(t),
		"DEVSTACK_CALLBACK_ADDR="+freeAddr(t),
		"DEVSTACK_INGEST_ADMIN_ADDR="+freeAddr(t),
		"DEVSTACK_DISPATCHER_ADMIN_ADDR="+freeAddr(t),
	)
	mk.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	out, err := mk.StdoutPipe()
	require.NoError(t, err)
	mk.Stderr = mk.Stdout // one stream, in order, as a terminal shows it
	require.NoError(t, mk.Start())
	t.Cleanup(func() { _ = syscall.Kill(-mk.Process.Pid, syscall.SIGKILL); _ = mk.Wait() })

	lines := make(chan string, 1000)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	var printed strings.Builder
	up := time.After(3 * time.Minute) // the first build of the stack is slow
	for !strings.Contains(printed.String(), "Ctrl-C stops everything") {
		select {
		case l, ok := <-lines:
			require.True(t, ok, "make dev ended before the stack was up:\n%s", printed.String())
			printed.WriteString(l + "\n")
		case <-up:
			t.Fatalf("the stack was not up within 3 minutes:\n%s", printed.String())
		}
	}

	require.NoError(t, syscall.Kill(-mk.Process.Pid, syscall.SIGINT), "Ctrl-C")
	for l := range lines {
		printed.WriteString(l + "\n")
	}
	err = mk.Wait()
	// make gets the Ctrl-C too; it may end with it once the stack has
	// stopped, which a shell reports as 130 and prints nothing for.
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		ws, _ := exit.Sys().(syscall.WaitStatus)
		require.True(t, ws.Signaled() && ws.Signal() == syscall.SIGINT,
			"make dev exits 0, or ends by the Ctrl-C itself, after Ctrl-C; got %v:\n%s", err, printed.String())
	} else {
		require.NoError(t, err)
	}
	require.Contains(t, printed.String(), "devstack: stopped")
	require.NotContains(t, printed.String(), "make: ***", "make reports no error")
}
