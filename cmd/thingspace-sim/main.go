package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/esim-pipeline/thingspace-esim/internal/config"
	"github.com/esim-pipeline/thingspace-esim/internal/observability"
	"github.com/esim-pipeline/thingspace-esim/internal/simulator"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Getenv)
	stop()
	if err != nil {
		if config.IsHelp(err) {
			os.Exit(0)
		}
		fmt.Fprintf(os.Stderr, `{"level":"error","program":"thingspace-sim","error":%q}`+"\n", err.Error())
		os.Exit(1)
	}
}

// run serves the simulator until ctx ends.
func run(ctx context.Context, args []string, getenv func(string) string) error {
	return serve(ctx, args, getenv, os.Stdout, os.Stderr, nil)
}

// settings are the program's configuration.
type settings struct {
	listenAddr, logLevel   string
	clientID, username     string
	clientSecret, password config.Secret
	rejectDevices          string
	shutdownGrace          time.Duration
	sim                    simulator.Config
	seed                   int
}

func declare(set *config.Set, s *settings) {
	c := &s.sim
	set.String(&s.listenAddr, "listen-addr", "LISTEN_ADDR", "127.0.0.1:8090", "address to serve the ThingSpace API and /sim/ admin endpoints on")
	set.String(&s.logLevel, "log-level", "LOG_LEVEL", "info", "debug, info, warn or error (debug logs every call)")
	set.String(&s.clientID, "client-id", "THINGSPACE_CLIENT_ID", simulator.DemoClientID, "OAuth2 client id accepted")
	set.Secret(&s.clientSecret, "client-secret", "THINGSPACE_CLIENT_SECRET", "OAuth2 client secret accepted (demo value "+simulator.DemoClientSecret+" when unset)")
	set.String(&s.username, "username", "THINGSPACE_USERNAME", simulator.DemoUsername, "M2M session login username accepted")
	set.Secret(&s.password, "password", "THINGSPACE_PASSWORD", "M2M session login password accepted (demo value "+simulator.DemoPassword+" when unset)")
	set.Duration(&c.TokenLifetime, "token-lifetime", "SIM_TOKEN_LIFETIME", time.Hour, "API token lifetime from first issue; the same token is returned within it")
	set.Duration(&c.SessionIdle, "session-idle", "SIM_SESSION_IDLE", 20*time.Minute, "M2M session expiry after this long without use (sliding)")
	set.Int(&c.LockoutAfter, "lockout-after", "SIM_LOCKOUT_AFTER", 5, "consecutive failed logins that lock the account (POST /sim/unlock clears it)")
	set.Duration(&c.CallbackDelay, "callback-delay", "SIM_CALLBACK_DELAY", 0, "delay before each device's callback, and between a warning and its final callback")
	set.Float(&c.WarningShare, "warning-share", "SIM_WARNING_SHARE", 0, "share of devices (0-1) first getting a warning callback, then a final one")
	set.Float(&c.FailShare, "fail-share", "SIM_FAIL_SHARE", 0, "share of devices (0-1) getting a Failed callback with a faultResponse")
	set.Float(&c.DropFinalShare, "drop-final-share", "SIM_DROP_FINAL_SHARE", 0, "share of devices (0-1) whose final callback is never sent (request status still reports the outcome)")
	set.Float(&c.StuckShare, "stuck-share", "SIM_STUCK_SHARE", 0, "share of devices (0-1) that never settle: no final callback, request status pending forever")
	set.Duration(&c.ResendInterval, "resend-interval", "SIM_RESEND_INTERVAL", 5*time.Minute, "wait before resending a callback not answered 2xx")
	set.Int(&c.MaxCallbackThreshold, "max-callback-threshold", "SIM_MAX_CALLBACK_THRESHOLD", 4, "attempts per callback (callbackCount counts them)")
	set.Duration(&c.CallbackTimeout, "callback-timeout", "SIM_CALLBACK_TIMEOUT", 30*time.Second, "how long a callback POST may take to be answered")
	set.Int(&c.RatePerMinute, "rate-per-minute", "SIM_RATE_PER_MINUTE", simulator.DefaultRatePerMinute, "profile action calls per account per minute before 429 with Retry-After (negative: unlimited)")
	set.Float(&c.ErrorShare, "error-share", "SIM_ERROR_SHARE", 0, "share of business calls (0-1) answered 500 REQUEST_FAILED.UnexpectedError (errorCode \"500\" on the Global endpoints)")
	set.Duration(&c.Latency, "latency", "SIM_LATENCY", 0, "latency added to every business call")
	set.Float(&c.DropShare, "drop-share", "SIM_DROP_SHARE", 0, "share of business calls (0-1) whose connection is closed without an answer")
	set.Int(&c.MaxDevices, "max-devices", "SIM_MAX_DEVICES", 10000, "most devices per request (more: 400 INPUT_INVALID.MaxRequestsExceeded, \"400\" on the Global endpoints)")
	set.String(&s.rejectDevices, "reject-devices", "SIM_REJECT_DEVICES", "", "comma-separated identifier values refused with 400 INPUT_INVALID.Device.Identifier.Invalid (\"400\" on the Global endpoints), the message naming them")
	set.Int(&c.DeliveryWorkers, "delivery-workers", "SIM_DELIVERY_WORKERS", 64, "concurrent callback senders (keep-alive connections)")
	set.Duration(&c.RequestRetention, "request-retention", "SIM_REQUEST_RETENTION", time.Hour, "how long each request's device outcomes stay available to the request status endpoint")
	set.Int(&c.HistoryLimit, "history-limit", "SIM_HISTORY_LIMIT", 10000, "calls and deliveries kept for GET /sim/calls and /sim/deliveries")
	set.Int(&s.seed, "seed", "SIM_SEED", 0, "seed for the random draws (0: from the clock)")
	set.Duration(&s.shutdownGrace, "shutdown-grace", "SIM_SHUTDOWN_GRACE", 5*time.Second, "how long in-flight calls may take to finish at shutdown")
}

// serve is run with its outputs and a hook told the bound address (tests).
func serve(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer, ready func(addr string)) error {
	var s settings
	set := config.NewSet("thingspace-sim", stderr)
	declare(set, &s)
	if err := set.Parse(args, getenv); err != nil {
		return err
	}
	log, err := observability.NewLogger(stdout, s.logLevel, "thingspace-sim")
	if err != nil {
		return err
	}
	c := s.sim
	c.ClientID, c.Username = s.clientID, s.username
	c.ClientSecret, c.Password = s.clientSecret.Reveal(), s.password.Reveal()
	if c.ClientSecret == "" {
		c.ClientSecret = simulator.DemoClientSecret
	}
	if c.Password == "" {
		c.Password = simulator.DemoPassword
	}
	if s.seed < 0 {
		return errors.New("SIM_SEED: must not be negative")
	}
	c.Seed = uint64(s.seed)
	for _, id := range strings.Split(s.rejectDevices, ",") {
		if id = strings.TrimSpace(id); id != "" {
			c.RejectDevices = append(c.RejectDevices, id)
		}
	}
	c.Logger = log
	sim, err := simulator.New(c)
	if err != nil {
		return err
	}
	sim.Start()
	defer sim.Close()

	srv, err := observability.Listen(s.listenAddr, sim.Handler(), log)
	if err != nil {
		return fmt.Errorf("LISTEN_ADDR %s: %w", s.listenAddr, err)
	}
	log.Info().Interface("config", set.Resolved()).Str("addr", srv.Addr()).Msg("thingspace simulator listening")
	if ready != nil {
		ready(srv.Addr())
	}
	err = srv.Serve(ctx, s.shutdownGrace)
	log.Info().Interface("stats", sim.Stats()).Msg("thingspace simulator stopped")
	return err
}
