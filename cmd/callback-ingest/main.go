package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/esim-pipeline/thingspace-esim/internal/callback"
	"github.com/esim-pipeline/thingspace-esim/internal/config"
	"github.com/esim-pipeline/thingspace-esim/internal/observability"
)

const program = "callback-ingest"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Getenv, os.Stdout)
	stop()
	if err != nil {
		if config.IsHelp(err) {
			os.Exit(0)
		}
		fmt.Fprintf(os.Stderr, "%s: %v\n", program, err)
		os.Exit(1)
	}
}

// run reads the settings from args and getenv, logs them (secrets masked) to
// stdout with every later log line, and serves until ctx ends.
func run(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	var cfg callback.Config
	set := config.NewSet(program, stdout)
	cfg.Declare(set)
	if err := set.Parse(args, getenv); err != nil {
		return err
	}
	if len(set.Args()) > 0 {
		return fmt.Errorf("unexpected argument %q (settings are flags or environment variables)", set.Args()[0])
	}
	if err := cfg.Validate(); err != nil {
		return err
	}
	log, err := observability.NewLogger(stdout, cfg.LogLevel, program)
	if err != nil {
		return err
	}
	log.Info().Interface("config", set.Resolved()).Msg("starting")
	if err := callback.Run(ctx, cfg, log); err != nil {
		log.Error().Err(err).Msg("stopped with an error")
		return err
	}
	return nil
}
