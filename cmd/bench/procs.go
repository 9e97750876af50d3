package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// proc is a child process whose stdout is JSON log lines (zerolog): it keeps
// the last value of every string field and when each message was first seen,
// and copies everything to a log file.
type proc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
	log  *os.File

	mu       sync.Mutex
	fields   map[string]string
	messages map[string]time.Time
	tail     []string // last lines, for error reports
	waitErr  error
}

// startProc starts bin with exactly env (plus PATH and HOME) and args.
func startProc(name, logPath, bin string, args, env []string) (*proc, error) {
	lf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME")}, env...)
	cmd.Stderr = lf
	out, err := cmd.StdoutPipe()
	if err != nil {
		lf.Close()
		return nil, err
	}
	p := &proc{name: name, cmd: cmd, done: make(chan struct{}), log: lf, fields: map[string]string{}, messages: map[string]time.Time{}}
	if err := cmd.Start(); err != nil {
		lf.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	go p.scan(out)
	return p, nil
}

func (p *proc) scan(r io.Reader) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Bytes()
		seen := time.Now()
		_, _ = p.log.Write(line)
		_, _ = p.log.Write([]byte{'\n'})
		var m map[string]any
		isJSON := bytes.HasPrefix(line, []byte("{")) && json.Unmarshal(line, &m) == nil
		p.mu.Lock()
		if isJSON {
			for k, v := range m {
				if s, ok := v.(string); ok {
					p.fields[k] = s
				}
			}
			if msg, ok := m["message"].(string); ok {
				if _, dup := p.messages[msg]; !dup {
					p.messages[msg] = seen
				}
			}
		}
		p.tail = append(p.tail, string(line))
		if len(p.tail) > 8 {
			p.tail = p.tail[len(p.tail)-8:]
		}
		p.mu.Unlock()
	}
	err := p.cmd.Wait()
	p.mu.Lock()
	p.waitErr = err
	p.mu.Unlock()
	_ = p.log.Close()
	close(p.done)
}

// exited reports an error naming the process when it has ended.
func (p *proc) exited() error {
	select {
	case <-p.done:
		p.mu.Lock()
		defer p.mu.Unlock()
		return fmt.Errorf("%s exited (%v); last lines: %s", p.name, p.waitErr, strings.Join(p.tail, " | "))
	default:
		return nil
	}
}

// awaitMessage waits until a log line with message msg was seen and returns
// when it was seen, then the value of field (empty field: none).
func (p *proc) awaitMessage(ctx context.Context, msg, field string, timeout time.Duration) (time.Time, string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	for {
		p.mu.Lock()
		at, ok := p.messages[msg]
		v := p.fields[field]
		p.mu.Unlock()
		if ok {
			return at, v, nil
		}
		if err := p.exited(); err != nil {
			return time.Time{}, "", err
		}
		select {
		case <-ctx.Done():
			return time.Time{}, "", fmt.Errorf("%s: no %q log line: %w", p.name, msg, ctx.Err())
		case <-t.C:
		}
	}
}

// stop sends SIGTERM, waits up to grace, then kills.
func (p *proc) stop(grace time.Duration) {
	if p.exited() != nil {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

// peakRSS is the process's VmHWM (peak resident set) in bytes.
func peakRSS(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("VmHWM %q: %w", rest, err)
			}
			return kb << 10, nil
		}
	}
	return 0, errors.New("no VmHWM in /proc status")
}

// clockTicks is USER_HZ, 100 on every Linux the bench runs on.
const clockTicks = 100

// cpuTime is the user+system CPU time the process has used so far.
func cpuTime(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, errors.New("malformed /proc stat")
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, errors.New("short /proc stat")
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, err
	}
	return time.Duration(ut+st) * time.Second / clockTicks, nil
}

// selfCPU is this process's user+system CPU time.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// cpuMeter measures the cores each process used over a window.
type cpuMeter struct {
	start time.Time
	pids  map[string]int
	base  map[string]time.Duration
}

const (
	selfName    = "bench (load generator / simulator / baseline)"
	machineName = "machine (every process, other users' included)"
	stealName   = "stolen (by the hypervisor, for other machines)"
)

func newCPUMeter(pids map[string]int) *cpuMeter {
	m := &cpuMeter{start: time.Now(), pids: pids, base: map[string]time.Duration{}}
	for n, pid := range pids {
		m.base[n], _ = cpuTime(pid)
	}
	m.base[selfName] = selfCPU()
	m.base[machineName], m.base[stealName], _ = machineBusy()
	return m
}

// machineBusy is the CPU time every core spent busy since boot, and the
// part of it the hypervisor gave to other machines (steal), from /proc/stat.
func machineBusy() (busy, steal time.Duration, err error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0, err
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return 0, 0, errors.New("malformed /proc/stat")
	}
	var ticks, stolen int64
	for i, v := range f[1:9] { // user nice system idle iowait irq softirq steal
		if i == 3 || i == 4 {
			continue
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return 0, 0, err
		}
		ticks += n
		if i == 7 {
			stolen = n
		}
	}
	return time.Duration(ticks) * time.Second / clockTicks, time.Duration(stolen) * time.Second / clockTicks, nil
}

// cores returns the average cores used by each process since the start.
func (m *cpuMeter) cores() map[string]float64 {
	wall := time.Since(m.start).Seconds()
	out := map[string]float64{}
	for n, pid := range m.pids {
		if c, err := cpuTime(pid); err == nil {
			out[n] = (c - m.base[n]).Seconds() / wall
		}
	}
	out[selfName] = (selfCPU() - m.base[selfName]).Seconds() / wall
	if c, st, err := machineBusy(); err == nil {
		out[machineName] = (c - m.base[machineName]).Seconds() / wall
		out[stealName] = (st - m.base[stealName]).Seconds() / wall
	}
	return out
}
