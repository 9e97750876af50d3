package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"github.com/esim-pipeline/thingspace-esim/internal/config"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	if err != nil && !config.IsHelp(err) {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// settings are the knobs of one bench run.
type settings struct {
	out          string        // BENCHMARKS.md path; empty: print only
	commands     int           // pre-published commands of measurement 1
	syncCommands int           // pre-published commands of the sync_interval=always runs
	backlog      int           // commands waiting during the memory measurement
	memFor       time.Duration // how long the dispatcher runs over the backlog
	load         time.Duration // measured window of each HTTP load run
	warmup       time.Duration // unmeasured start of each HTTP load run
	conns        int           // keep-alive connections of the load generator
	rounds       int           // runs of each side of the noisiest comparisons, in turn; the medians count
	runTimeout   time.Duration // limit of one run
	deadline     time.Duration // limit of the whole bench
	profile      bool          // run the profiling passes
	keep         bool          // keep the work directory (logs, profiles)
	only         string        // comma-separated subset: dispatch, ingest, memory, sync, sync-ingest, profile
	short        bool          // tiny counts and windows, nothing written: a smoke run
	logLevel     string
	// Extra environment of the services, to try a setting (NAME=value,...).
	dispatcherEnv string
	ingestEnv     string
	// The opt-in store measurement (-only atomic, atomic-cluster).
	atomicWindow   time.Duration // how long each variant publishes
	atomicVariants string        // comma-separated variant keys; empty: the step's default list
}

func (s *settings) declare(set *config.Set) {
	set.String(&s.out, "out", "BENCH_OUT", "BENCHMARKS.md", "file the table is written to (empty: print only)")
	set.Int(&s.commands, "commands", "BENCH_COMMANDS", 200_000, "pre-published single-device commands of the dispatcher measurement")
	set.Int(&s.syncCommands, "sync-commands", "BENCH_SYNC_COMMANDS", 50_000, "pre-published commands of the sync_interval=always dispatcher runs (each event is an fsync)")
	set.Int(&s.backlog, "backlog", "BENCH_BACKLOG", 1_000_000, "commands waiting in the stream during the memory measurement")
	set.Duration(&s.memFor, "mem-duration", "BENCH_MEM_DURATION", 25*time.Second, "how long the dispatcher runs over the backlog (rate 1 call/s)")
	set.Duration(&s.load, "load-duration", "BENCH_LOAD_DURATION", 10*time.Second, "measured window of each callback load run")
	set.Duration(&s.warmup, "warmup", "BENCH_WARMUP", time.Second, "unmeasured start of each callback load run")
	set.Int(&s.conns, "connections", "BENCH_CONNECTIONS", 64, "keep-alive connections of the callback load generator")
	set.Int(&s.rounds, "rounds", "BENCH_ROUNDS", 3, "runs of each side, taken in turn, of the dispatcher against its program (1), the ingest's closed loop (2) and the sync-always dispatcher against its publishers (4); the table gives the median of each")
	set.Duration(&s.runTimeout, "run-timeout", "BENCH_RUN_TIMEOUT", 150*time.Second, "limit of one run; a run that hits it reports what it did")
	set.Duration(&s.deadline, "deadline", "BENCH_DEADLINE", 9*time.Minute+30*time.Second, "limit of the whole bench")
	set.Bool(&s.profile, "profile", "BENCH_PROFILE", true, "run the CPU profiling passes and put their top functions in the report")
	set.Bool(&s.keep, "keep", "BENCH_KEEP", false, "keep the work directory (service logs, CPU profiles)")
	set.String(&s.only, "only", "BENCH_ONLY", "", "comma-separated subset of: dispatch, ingest, memory, sync (the dispatcher), sync-ingest, profile (empty: all of these); opt-in, only when named: atomic (status-event stores: sync, async, atomic batches, one server), atomic-cluster (the same on three nodes, R3)")
	set.Bool(&s.short, "short", "BENCH_SHORT", false, "smoke run: small counts and short windows, BENCHMARKS.md not written")
	set.String(&s.logLevel, "log-level", "LOG_LEVEL", "info", "level of the bench's progress lines on stderr")
	set.String(&s.dispatcherEnv, "dispatcher-env", "BENCH_DISPATCHER_ENV", "", "extra dispatcher settings, NAME=value,... (to try one; the report says so)")
	set.String(&s.ingestEnv, "ingest-env", "BENCH_INGEST_ENV", "", "extra callback-ingest settings, NAME=value,... (to try one; the report says so)")
	set.Duration(&s.atomicWindow, "atomic-window", "BENCH_ATOMIC_WINDOW", 4*time.Second, "how long each variant of -only atomic / atomic-cluster publishes (its last group finishes after)")
	set.String(&s.atomicVariants, "atomic-variants", "BENCH_ATOMIC_VARIANTS", "", "variants of -only atomic / atomic-cluster, comma-separated keys (sync-64, async-1x10000, atomic-8x1000, ...; empty: the step's default list)")
}

func (s *settings) applyShort() {
	if !s.short {
		return
	}
	s.out = ""
	s.commands = 20_000
	s.syncCommands = 5_000
	s.backlog = 100_000
	s.memFor = 5 * time.Second
	s.load = 2 * time.Second
	s.warmup = 500 * time.Millisecond
	s.runTimeout = 60 * time.Second
	s.rounds = 1
	s.atomicWindow = time.Second
}

func (s settings) validate() error {
	var errs []error
	if s.commands < 1 || s.syncCommands < 1 || s.backlog < 1 {
		errs = append(errs, errors.New("BENCH_COMMANDS, BENCH_SYNC_COMMANDS and BENCH_BACKLOG must be positive"))
	}
	if s.conns < 1 || s.conns > 1024 {
		errs = append(errs, fmt.Errorf("BENCH_CONNECTIONS: %d is out of range 1..1024", s.conns))
	}
	if s.rounds < 1 || s.rounds > 9 {
		errs = append(errs, fmt.Errorf("BENCH_ROUNDS: %d is out of range 1..9", s.rounds))
	}
	if _, err := parseVariants(s.atomicVariants, allStoreVariants); err != nil {
		errs = append(errs, fmt.Errorf("BENCH_ATOMIC_VARIANTS: %w", err))
	}
	if s.load <= 0 || s.memFor <= 0 || s.runTimeout <= 0 || s.deadline <= 0 || s.warmup < 0 || s.atomicWindow <= 0 {
		errs = append(errs, errors.New("durations must be positive"))
	}
	return errors.Join(errs...)
}

func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	if len(args) > 0 {
		if r, ok := roles[args[0]]; ok {
			return r(ctx, getenv, stdout)
		}
	}
	var s settings
	set := config.NewSet("bench", stderr)
	s.declare(set)
	if err := set.Parse(args, getenv); err != nil {
		return err
	}
	if len(set.Args()) > 0 {
		return fmt.Errorf("unexpected argument %q", set.Args()[0])
	}
	s.applyShort()
	if err := s.validate(); err != nil {
		return err
	}
	level, err := zerolog.ParseLevel(s.logLevel)
	if err != nil {
		return fmt.Errorf("LOG_LEVEL: %w", err)
	}
	log := zerolog.New(zerolog.ConsoleWriter{Out: stderr, TimeFormat: "15:04:05"}).Level(level).With().Timestamp().Logger()

	ctx, cancel := context.WithTimeout(ctx, s.deadline)
	defer cancel()
	b, err := newBench(ctx, s, log)
	if err != nil {
		return err
	}
	defer b.close()
	rep := b.runAll(ctx)
	md := rep.markdown()
	fmt.Fprintln(stdout, md)
	if s.out != "" {
		if err := writeReport(s.out, md); err != nil {
			return err
		}
		log.Info().Str("file", s.out).Msg("report written")
	}
	if ctx.Err() != nil {
		return fmt.Errorf("bench stopped before the end: %w", ctx.Err())
	}
	return nil
}
