// Command dispatcher takes eSIM profile-action commands from NATS JetStream
// and carries them out on ThingSpace in rate-limited bulk calls. Every
// setting is an environment variable and a flag: see --help.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/esim-pipeline/thingspace-esim/internal/broker"
	"github.com/esim-pipeline/thingspace-esim/internal/config"
	"github.com/esim-pipeline/thingspace-esim/internal/dispatch"
	"github.com/esim-pipeline/thingspace-esim/internal/observability"
	"github.com/esim-pipeline/thingspace-esim/internal/thingspace"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr); err != nil {
		if config.IsHelp(err) {
			return
		}
		fmt.Fprintln(os.Stderr, "dispatcher:", strings.ReplaceAll(err.Error(), "\n", "; "))
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	var cfg dispatch.Config
	set := config.NewSet("dispatcher", stderr)
	cfg.Declare(set)
	if err := set.Parse(args, getenv); err != nil {
		return err
	}
	if err := cfg.Validate(); err != nil { // before connecting: a bad value fails at once
		return err
	}
	log, err := observability.NewLogger(stdout, cfg.LogLevel, "dispatcher")
	if err != nil {
		return err
	}
	log.Info().Interface("config", set.Resolved()).Msg("dispatcher starting")

	nc, err := broker.Connect(ctx, cfg.NATS, "esim-dispatcher", log)
	if err != nil {
		return err
	}
	defer nc.Close()
	ready := broker.NewReadiness(nc)
	reg := observability.NewRegistry()
	admin, err := observability.StartAdmin(cfg.MetricsAddr, reg, ready.Check, log)
	if err != nil {
		return err
	}
	defer func() { _ = admin.Stop() }()

	ts, err := thingspace.New(cfg.ThingSpace(log))
	if err != nil {
		return err
	}
	svc, err := dispatch.New(cfg, nc, ts, log, dispatch.WithRegistry(reg), dispatch.OnReady(func() {
		ready.SetReady()
		log.Info().Str("admin_addr", admin.Addr()).Msg("dispatcher ready")
	}))
	if err != nil {
		return err
	}
	err = svc.Run(ctx)
	if derr := nc.Drain(); derr != nil {
		log.Warn().Err(derr).Msg("drain")
	}
	return err
}
