package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/esim-pipeline/thingspace-esim/internal/broker"
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
	if len(args) > 0 && args[0] == "replay" {
		return replay(ctx, args[1:], getenv, stdout)
	}
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

// replay re-runs the fan-out over the stored raw callbacks, then writes the
// EID index of the status events (all, or those since --since):
//
//	callback-ingest replay [--since 2026-11-20T00:00:00Z | --from-seq N] [--dry-run]
//
// Events already in the status stream (same eventId) are not published
// again; index keys already there are written again, unchanged.
func replay(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	var (
		nc       config.NATS
		level    string
		since    string
		fromSeq  int
		dry      bool
		replicas int
	)
	set := config.NewSet(program+" replay", stdout)
	config.DeclareNATS(set, &nc)
	config.DeclareLogLevel(set, &level)
	set.String(&since, "since", "REPLAY_SINCE", "", "replay callbacks stored at or after this RFC 3339 time (default: all)")
	set.Int(&fromSeq, "from-seq", "REPLAY_FROM_SEQ", 0, "replay from this stream sequence instead")
	set.Bool(&dry, "dry-run", "REPLAY_DRY_RUN", false, "count what would be published, publish nothing")
	set.Int(&replicas, "stream-replicas", "STREAM_REPLICAS", 1, "replicas of the EID index bucket if the replay creates it")
	if err := set.Parse(args, getenv); err != nil {
		return err
	}
	if replicas < 1 || replicas > 5 {
		return fmt.Errorf("STREAM_REPLICAS: %d is out of range 1..5", replicas)
	}
	settings := broker.StreamSettings{Replicas: replicas}
	opts := callback.ReplayOptions{DryRun: dry, Settings: settings}
	if since != "" {
		t, err := time.Parse(time.RFC3339, since)
		if err != nil {
			return fmt.Errorf("REPLAY_SINCE: want an RFC 3339 time, got %q", since)
		}
		opts.Since = t
	}
	if fromSeq < 0 {
		return fmt.Errorf("REPLAY_FROM_SEQ: %d is negative", fromSeq)
	}
	opts.FromSeq = uint64(fromSeq)
	log, err := observability.NewLogger(stdout, level, program+"-replay")
	if err != nil {
		return err
	}
	conn, err := broker.Connect(ctx, nc, program+"-replay", log)
	if err != nil {
		return err
	}
	defer conn.Close()
	js, err := jetstream.New(conn)
	if err != nil {
		return err
	}
	st, err := callback.Replay(ctx, js, opts, log)
	log.Info().Int("callbacks", st.Callbacks).Int("published", st.Published).Int("existing", st.Existing).
		Int("unparseable", st.Unparseable).Int("status_events", st.Index.Events).Int("eid_index_keys", st.Index.Written).
		Bool("dry_run", dry).Msg("replay done")
	return err
}
