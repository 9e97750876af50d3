// Command devstack runs the whole pipeline in one process for development
// and demos: an embedded nats-server with JetStream on 127.0.0.1:4222 (data
// kept under --data), the ThingSpace simulator, the callback-ingest and the
// dispatcher, wired together with the callback URL registered. It prints
// where everything listens and three lines to try. Ctrl-C stops it cleanly.
//
// It runs the real service code through internal/stack, as the tests'
// pipelinetest does; only the choice of addresses and settings is here.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/rs/zerolog"

	"github.com/esim-pipeline/thingspace-esim/internal/callback"
	"github.com/esim-pipeline/thingspace-esim/internal/config"
	"github.com/esim-pipeline/thingspace-esim/internal/dispatch"
	"github.com/esim-pipeline/thingspace-esim/internal/observability"
	"github.com/esim-pipeline/thingspace-esim/internal/simulator"
	"github.com/esim-pipeline/thingspace-esim/internal/stack"
)

// NATSCLI is how the printed commands run the NATS CLI, pinned.
const NATSCLI = "go run github.com/nats-io/natscli/nats@v0.5.0"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	if err != nil && !config.IsHelp(err) {
		fmt.Fprintln(os.Stderr, "devstack:", err)
		os.Exit(1)
	}
}

type settings struct {
	data          string
	natsPort      int
	simAddr       string
	callbackAddr  string
	ingestAdmin   string
	dispatchAdmin string
	logLevel      string
	callbackDelay time.Duration
	warningShare  float64
	failShare     float64
	rate          float64
	batchWait     time.Duration
}

func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	var s settings
	set := config.NewSet("devstack", stderr)
	set.String(&s.data, "data", "DEVSTACK_DATA", ".devstack", "folder for NATS data and the services' logs (kept across restarts)")
	set.Int(&s.natsPort, "nats-port", "DEVSTACK_NATS_PORT", 4222, "NATS client port on 127.0.0.1")
	set.String(&s.simAddr, "sim-addr", "DEVSTACK_SIM_ADDR", "127.0.0.1:8090", "ThingSpace simulator listener")
	set.String(&s.callbackAddr, "callback-addr", "DEVSTACK_CALLBACK_ADDR", "127.0.0.1:8080", "callback-ingest's public listener (POST /callbacks)")
	set.String(&s.ingestAdmin, "ingest-admin-addr", "DEVSTACK_INGEST_ADMIN_ADDR", "127.0.0.1:9091", "callback-ingest's admin listener")
	set.String(&s.dispatchAdmin, "dispatcher-admin-addr", "DEVSTACK_DISPATCHER_ADMIN_ADDR", "127.0.0.1:9090", "dispatcher's admin listener")
	set.String(&s.logLevel, "log-level", "LOG_LEVEL", "info", "level of the services' logs (written under --data/logs)")
	set.Duration(&s.callbackDelay, "callback-delay", "SIM_CALLBACK_DELAY", time.Second, "simulator: delay before each device's callback")
	set.Float(&s.warningShare, "warning-share", "SIM_WARNING_SHARE", 0.1, "simulator: share of devices first reported `warning` (pending)")
	set.Float(&s.failShare, "fail-share", "SIM_FAIL_SHARE", 0, "simulator: share of devices that fail")
	set.Float(&s.rate, "thingspace-rate", "THINGSPACE_RATE", 1.5, "dispatcher: ThingSpace calls per second")
	set.Duration(&s.batchWait, "batch-max-wait", "BATCH_MAX_WAIT", time.Second, "dispatcher: how long a batch may wait to fill")
	if err := set.Parse(args, getenv); err != nil {
		return err
	}
	logDir := filepath.Join(s.data, "logs")
	if err := os.MkdirAll(logDir, 0o755); err != nil {
		return err
	}
	logs := map[string]*os.File{}
	logger := func(program string) (zerolog.Logger, error) {
		f, err := os.OpenFile(filepath.Join(logDir, program+".log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
		if err != nil {
			return zerolog.Nop(), err
		}
		logs[program] = f
		return observability.NewLogger(f, s.logLevel, program)
	}
	defer func() {
		for _, f := range logs {
			_ = f.Close()
		}
	}()

	// NATS, embedded: the real server.
	ns, err := server.NewServer(&server.Options{
		ServerName: "devstack",
		Host:       "127.0.0.1",
		Port:       s.natsPort,
		JetStream:  true,
		StoreDir:   filepath.Join(s.data, "nats"),
		NoSigs:     true,
		NoLog:      true,
	})
	if err != nil {
		return fmt.Errorf("nats-server: %w", err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		ns.Shutdown()
		return fmt.Errorf("nats-server did not start on 127.0.0.1:%d (is the port in use?)", s.natsPort)
	}
	defer func() { ns.Shutdown(); ns.WaitForShutdown() }()
	natsURL := "nats://127.0.0.1:" + strconv.Itoa(s.natsPort)

	// Credentials shared by the simulator and the dispatcher, as one
	// environment would: demo values.
	const cbUser, cbPass = "devstack", "devstack-callback-secret"

	simLog, err := logger("thingspace-sim")
	if err != nil {
		return err
	}
	sim, err := stack.StartSimulator(simulator.Config{
		Logger: simLog,
		Faults: simulator.Faults{CallbackDelay: s.callbackDelay, WarningShare: s.warningShare, FailShare: s.failShare},
	}, s.simAddr, nil)
	if err != nil {
		return err
	}
	defer func() { _ = sim.Stop() }()

	ingestLog, err := logger("callback-ingest")
	if err != nil {
		return err
	}
	ingest, err := stack.StartIngest(callback.Config{
		NATS:        config.NATS{URL: natsURL},
		ListenAddr:  s.callbackAddr,
		MetricsAddr: s.ingestAdmin,
		Username:    cbUser,
		Password:    config.NewSecret(cbPass),
	}, ingestLog)
	if err != nil {
		return err
	}
	defer func() { _ = ingest.Stop() }()

	dispLog, err := logger("dispatcher")
	if err != nil {
		return err
	}
	disp, err := stack.StartDispatcher(dispatch.Config{
		NATS:             config.NATS{URL: natsURL},
		BaseURL:          sim.URL,
		ClientID:         simulator.DemoClientID,
		ClientSecret:     config.NewSecret(simulator.DemoClientSecret),
		Username:         simulator.DemoUsername,
		Password:         config.NewSecret(simulator.DemoPassword),
		Rate:             s.rate,
		BatchMaxWait:     s.batchWait,
		MetricsAddr:      s.dispatchAdmin,
		CallbackURL:      ingest.CallbackURL(),
		CallbackUsername: cbUser,
		CallbackPassword: config.NewSecret(cbPass),
	}, dispLog)
	if err != nil {
		return err
	}
	defer func() { _ = disp.Stop() }()

	banner(stdout, bannerInfo{
		nats: natsURL, data: s.data, sim: strings.TrimPrefix(sim.URL, "http://"), callback: ingest.Callback,
		ingestAdmin: ingest.Admin, dispatchAdmin: disp.AdminAddr, logs: logDir,
	})

	// A part that stops on its own (NATS lost for good, a listener's
	// error) stops the stack.
	select {
	case <-ctx.Done():
	case <-sim.Done():
	case <-ingest.Done():
	case <-disp.Done():
	}
	fmt.Fprintln(stdout, "devstack: stopping")
	if err := errors.Join(disp.Stop(), ingest.Stop(), sim.Stop()); err != nil {
		return err
	}
	fmt.Fprintln(stdout, "devstack: stopped")
	return nil
}

type bannerInfo struct {
	nats, data, sim, callback, ingestAdmin, dispatchAdmin, logs string
}

// ExampleCommand is the enable command the banner and README print.
const ExampleCommand = `{"accountName":"0000123456-00001","smsrOid":"1.3.6.1.4.1.31746.1.500.200.101.5","devices":[{"deviceIds":[{"kind":"eid","id":"89049032000000000000000000000001"},{"kind":"iccid","id":"89148000000000000001"}]}]}`

func banner(w io.Writer, b bannerInfo) {
	host := func(addr string) string {
		h, p, err := net.SplitHostPort(addr)
		if err != nil || h == "" || h == "::" || h == "0.0.0.0" {
			return "127.0.0.1:" + p
		}
		return addr
	}
	fmt.Fprintf(w, `
eSIM pipeline dev stack is up.

  NATS with JetStream   %s   (data in %s)
  ThingSpace simulator  http://%s
  callback-ingest       http://%s/callbacks   admin http://%s   (GET /devices/{iccid or eid})
  dispatcher            admin http://%s
  logs                  %s/

Try it (in another terminal):

  %s sub --all 'thingspace.profile.status.>'
  %s pub thingspace.profile.commands.enable '%s'
  curl -s http://%s/metrics | grep '^esim_'

Ctrl-C stops everything.
`, b.nats, filepath.Join(b.data, "nats"), host(b.sim), host(b.callback), host(b.ingestAdmin), host(b.dispatchAdmin), b.logs,
		NATSCLI, NATSCLI, ExampleCommand, host(b.dispatchAdmin))
}
