package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/esim-pipeline/thingspace-esim/internal/broker"
)

// natsServer is a nats-server process on loopback with JetStream on its own
// store directory.
type natsServer struct {
	*proc
	url     string
	profURL string // pprof listener, when asked for
}

type natsOptions struct {
	syncAlways bool
	profile    bool
	// batchMaxMsgs raises nats-server's atomic batch size limit
	// (jetstream.limits.batch.max_msgs, 1,000 by default); 0 keeps it.
	batchMaxMsgs int
}

// jetStreamBlock is the jetstream {} block of a server config on store.
func (o natsOptions) jetStreamBlock(store string) string {
	js := fmt.Sprintf("jetstream {\n  store_dir: %q\n", store)
	if o.syncAlways {
		js += "  sync_interval: always\n"
	}
	if o.batchMaxMsgs > 0 {
		js += fmt.Sprintf("  limits {\n    batch {\n      max_msgs: %d\n    }\n  }\n", o.batchMaxMsgs)
	}
	return js + "}\n"
}

// startNATS runs the nats-server binary on dir (dir/store is the JetStream
// store; it may already hold data) and waits until it accepts clients.
func startNATS(ctx context.Context, bin, dir string, o natsOptions) (*natsServer, error) {
	store := filepath.Join(dir, "store")
	if err := os.MkdirAll(store, 0o755); err != nil {
		return nil, err
	}
	conf := fmt.Sprintf("server_name: bench\nhost: 127.0.0.1\nport: -1\nports_file_dir: %q\nmax_payload: 8MB\n", dir)
	conf += o.jetStreamBlock(store)
	if o.profile {
		conf += "prof_port: -1\n"
	}
	ns, err := launchNATS(ctx, bin, dir, conf, o.profile)
	if err != nil {
		return nil, err
	}
	// JetStream answers once the store is recovered.
	nc, js2, err := connect(ns.url)
	if err != nil {
		ns.stop(5 * time.Second)
		return nil, err
	}
	defer nc.Close()
	if err := broker.Retry(ctx, func(ctx context.Context) error { _, err := js2.AccountInfo(ctx); return err }); err != nil {
		ns.stop(5 * time.Second)
		return nil, fmt.Errorf("nats-server JetStream: %w", err)
	}
	return ns, nil
}

// launchNATS writes conf to dir/nats.conf, starts the server on it and
// waits for its ports file (conf must set ports_file_dir to dir).
func launchNATS(ctx context.Context, bin, dir, conf string, wantProf bool) (*natsServer, error) {
	confPath := filepath.Join(dir, "nats.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		return nil, err
	}
	p, err := startProc("nats-server", filepath.Join(dir, "nats-server.log"), bin, []string{"-c", confPath}, nil)
	if err != nil {
		return nil, err
	}
	ns := &natsServer{proc: p}
	portsFile := filepath.Join(dir, fmt.Sprintf("%s_%d.ports", filepath.Base(bin), p.pid()))
	deadline := time.Now().Add(20 * time.Second)
	for {
		var ports struct {
			Nats    []string `json:"nats"`
			Profile []string `json:"profile"`
		}
		if b, err := os.ReadFile(portsFile); err == nil && json.Unmarshal(b, &ports) == nil && len(ports.Nats) > 0 {
			ns.url = ports.Nats[0]
			if len(ports.Profile) > 0 {
				ns.profURL = ports.Profile[0]
			}
			if !wantProf || ns.profURL != "" {
				return ns, nil
			}
		}
		if err := p.exited(); err != nil {
			return nil, err
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			p.stop(5 * time.Second)
			return nil, errors.New("nats-server did not write its ports file in 20s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// cpuProfile fetches a CPU profile of d from the server's pprof listener.
func (ns *natsServer) cpuProfile(ctx context.Context, d time.Duration, path string) error {
	if ns.profURL == "" {
		return errors.New("nats-server started without prof_port")
	}
	secs := max(1, int(d.Round(time.Second)/time.Second))
	ctx, cancel := context.WithTimeout(ctx, d+30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, ns.profURL+"/debug/pprof/profile?seconds="+strconv.Itoa(secs), nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("nats-server profile: %s", resp.Status)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// connect opens a plain client connection and its JetStream context.
func connect(url string, opts ...jetstream.JetStreamOpt) (*nats.Conn, jetstream.JetStream, error) {
	nc, err := nats.Connect(url, nats.Name("bench"), nats.Timeout(5*time.Second))
	if err != nil {
		return nil, nil, err
	}
	js, err := jetstream.New(nc, opts...)
	if err != nil {
		nc.Close()
		return nil, nil, err
	}
	return nc, js, nil
}

// copyDir copies the regular files and directories of src to dst.
func copyDir(src, dst string) error {
	return filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, path)
		if err != nil {
			return err
		}
		target := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(target, 0o755)
		}
		if !d.Type().IsRegular() {
			return nil
		}
		in, err := os.Open(path)
		if err != nil {
			return err
		}
		defer in.Close()
		out, err := os.Create(target)
		if err != nil {
			return err
		}
		if _, err := io.Copy(out, in); err != nil {
			out.Close()
			return err
		}
		return out.Close()
	})
}
