package esimctl

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/mattn/go-isatty"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/esim-pipeline/thingspace-esim/internal/broker"
	"github.com/esim-pipeline/thingspace-esim/internal/command"
	"github.com/esim-pipeline/thingspace-esim/internal/config"
)

// Exit codes.
const (
	ExitOK          = 0   // every device succeeded; or published with --no-wait
	ExitNotAll      = 1   // some device did not succeed, or the run could not be followed
	ExitUsage       = 2   // bad usage or a bad file; nothing was published
	ExitInterrupted = 130 // Ctrl-C: following stopped, the work goes on
)

// opError is a failure of the run's machinery (NATS unreachable, a stream
// missing): exit 1.
type opError struct{ err error }

func (e *opError) Error() string { return e.err.Error() }
func (e *opError) Unwrap() error { return e.err }

func opErr(err error) error {
	if err == nil {
		return nil
	}
	return &opError{err}
}

// errSaid marks an error whose message the command already printed on
// stderr, with what it means for the work.
var errSaid = errors.New("said")

// app is one invocation.
type app struct {
	getenv         func(string) string
	stdout, stderr io.Writer
	code           int

	natsURL, natsCreds, natsContext    string
	natsTLSCA, natsTLSCert, natsTLSKey string
	logLevel                           string
	connectTimeout                     time.Duration
	log                                zerolog.Logger
	tty                                bool
}

// Run is the whole program: main hands over its arguments (without the
// program name), environment and output, and exits with the code returned.
// ctx ending (Ctrl-C) stops following a run within a second or two; it never
// stops the work.
func Run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	if getenv == nil {
		getenv = os.Getenv
	}
	a := &app{getenv: getenv, stdout: stdout, stderr: stderr}
	if f, ok := stderr.(*os.File); ok {
		a.tty = isatty.IsTerminal(f.Fd()) || isatty.IsCygwinTerminal(f.Fd())
	}
	root := a.root()
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return a.code
	}
	var usage *UsageError
	var file *FileError
	var op *opError
	switch {
	case errors.As(err, &op):
		fmt.Fprintln(stderr, "esimctl:", err)
		return ExitNotAll
	case errors.Is(err, ErrInterrupted):
		if !errors.Is(err, errSaid) {
			fmt.Fprintln(stderr, "esimctl: interrupted")
		}
		return ExitInterrupted
	case errors.As(err, &file):
		fmt.Fprintln(stderr, "esimctl:", err)
		return ExitUsage
	case errors.As(err, &usage):
		fmt.Fprintln(stderr, "esimctl:", err)
	default: // cobra's own: unknown command or flag, wrong arguments
		fmt.Fprintln(stderr, "esimctl:", err)
	}
	fmt.Fprintln(stderr, "Run 'esimctl --help' for usage.")
	return ExitUsage
}

func (a *app) root() *cobra.Command {
	root := &cobra.Command{
		Use:   "esimctl",
		Short: "Carry out eSIM profile actions for a spreadsheet of SIMs, and see which did not go through",
		Long: `esimctl publishes a CSV of SIMs as commands to the eSIM pipeline over NATS, follows their
status events and writes one results row per SIM. Runs are recorded in NATS (KV bucket
` + RunBucket + `): submitting the same file again resumes the same run, nothing reaches
ThingSpace twice.

Exit codes: 0 every device succeeded, 1 some did not (or the run could not be followed),
2 bad usage or a bad file (nothing published), 130 interrupted (the work goes on).

NATS: --nats-url / NATS_URL (user:password@ in it authenticates), --nats-creds /
NATS_CREDS, --nats-tls-ca / NATS_TLS_CA, --nats-tls-cert / NATS_TLS_CERT and
--nats-tls-key / NATS_TLS_KEY (mutual TLS), or a NATS CLI context (--context /
NATS_CONTEXT; the variables and the flags override it).`,
		Example: `  esimctl submit --action disable --account 0000123456-00001 \
      --smsr-oid 1.3.6.1.4.1.31746.1.500.200.101.5 devices.csv
  esimctl watch 3f9c2a0d11b7e845
  esimctl status 89148000000000000101
  esimctl deadletters list --since 24h`,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			return a.setup(cmd)
		},
	}
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return &UsageError{Msg: err.Error()} })
	pf := root.PersistentFlags()
	pf.StringVar(&a.natsURL, "nats-url", "", "NATS server URL(s), comma-separated for a cluster (env NATS_URL) [default nats://127.0.0.1:4222]")
	pf.StringVar(&a.natsCreds, "nats-creds", "", "NATS .creds file (env NATS_CREDS)")
	pf.StringVar(&a.natsTLSCA, "nats-tls-ca", "", "PEM file of the CA that signed the NATS servers' certificates (env NATS_TLS_CA)")
	pf.StringVar(&a.natsTLSCert, "nats-tls-cert", "", "PEM client certificate for NATS mutual TLS (env NATS_TLS_CERT)")
	pf.StringVar(&a.natsTLSKey, "nats-tls-key", "", "PEM private key of --nats-tls-cert (env NATS_TLS_KEY)")
	pf.StringVar(&a.natsContext, "context", "", "NATS CLI context to read the URL and credentials from (env NATS_CONTEXT)")
	pf.StringVar(&a.logLevel, "log-level", "", "log level: debug, info, warn, error (env LOG_LEVEL) [default warn]")
	pf.DurationVar(&a.connectTimeout, "connect-timeout", 10*time.Second, "how long to wait for NATS")
	_ = root.RegisterFlagCompletionFunc("log-level", cobra.FixedCompletions([]string{"debug", "info", "warn", "error"}, cobra.ShellCompDirectiveNoFileComp))
	root.AddCommand(a.submitCmd(), a.watchCmd(), a.statusCmd(), a.deadlettersCmd())
	return root
}

// setup builds the logger.
func (a *app) setup(cmd *cobra.Command) error {
	level := a.logLevel
	if !cmd.Flags().Changed("log-level") {
		level = a.getenv("LOG_LEVEL")
	}
	if level == "" {
		level = "warn"
	}
	lvl, err := zerolog.ParseLevel(strings.ToLower(level))
	if err != nil {
		return usagef("--log-level %q: want debug, info, warn or error", level)
	}
	a.log = zerolog.New(zerolog.ConsoleWriter{Out: a.stderr, NoColor: !a.tty, TimeFormat: time.TimeOnly}).
		Level(lvl).With().Timestamp().Logger()
	return nil
}

// natsConfig resolves where NATS is: default, then the NATS CLI context,
// then NATS_URL/NATS_CREDS, then the flags.
func (a *app) natsConfig(flags *pflag.FlagSet) (config.NATS, error) {
	var n config.NATS
	set := config.NewSet("esimctl", io.Discard)
	config.DeclareNATS(set, &n)
	name := a.natsContext
	if !flags.Changed("context") {
		name = a.getenv("NATS_CONTEXT")
	}
	if name != "" {
		c, err := loadContext(name, a.getenv)
		if err != nil {
			return n, usagef("%v", err)
		}
		if c.URL != "" {
			n.URL = c.URL
		}
		if c.Creds != "" {
			n.Creds = c.Creds
		}
		for _, f := range []struct {
			dst *string
			v   string
		}{{&n.TLSCA, c.TLSCA}, {&n.TLSCert, c.TLSCert}, {&n.TLSKey, c.TLSKey}} {
			if f.v != "" {
				*f.dst = f.v
			}
		}
	}
	if err := set.Parse(nil, a.getenv); err != nil {
		return n, usagef("%v", err)
	}
	if flags.Changed("nats-url") {
		n.URL = a.natsURL
	}
	if flags.Changed("nats-creds") {
		n.Creds = a.natsCreds
	}
	for _, f := range []struct {
		flag string
		dst  *string
		v    string
	}{{"nats-tls-ca", &n.TLSCA, a.natsTLSCA}, {"nats-tls-cert", &n.TLSCert, a.natsTLSCert}, {"nats-tls-key", &n.TLSKey, a.natsTLSKey}} {
		if flags.Changed(f.flag) {
			*f.dst = f.v
		}
	}
	if err := n.Validate(); err != nil {
		return n, usagef("%v", err)
	}
	return n, nil
}

// natsContext is what esimctl reads of a NATS CLI context file.
type natsContext struct {
	URL      string `json:"url"`
	Creds    string `json:"creds"`
	User     string `json:"user"`
	Password string `json:"password"`
	Token    string `json:"token"`
	NKey     string `json:"nkey"`
	// TLS files, as the NATS CLI names them.
	TLSCA   string `json:"ca"`
	TLSCert string `json:"cert"`
	TLSKey  string `json:"key"`
}

// loadContext reads ~/.config/nats/context/<name>.json (or under
// XDG_CONFIG_HOME) as the NATS CLI writes it.
func loadContext(name string, getenv func(string) string) (config.NATS, error) {
	if strings.ContainsAny(name, `/\`) || name == "." || name == ".." {
		return config.NATS{}, fmt.Errorf("NATS context %q: not a context name", name)
	}
	dir := getenv("XDG_CONFIG_HOME")
	if dir == "" {
		home := getenv("HOME")
		if home == "" {
			return config.NATS{}, fmt.Errorf("NATS context %q: neither XDG_CONFIG_HOME nor HOME is set", name)
		}
		dir = filepath.Join(home, ".config")
	}
	path := filepath.Join(dir, "nats", "context", name+".json")
	b, err := os.ReadFile(path)
	if err != nil {
		return config.NATS{}, fmt.Errorf("NATS context %q: %w", name, err)
	}
	var c natsContext
	if err := json.Unmarshal(b, &c); err != nil {
		return config.NATS{}, fmt.Errorf("NATS context %s: %w", path, err)
	}
	if c.NKey != "" {
		return config.NATS{}, fmt.Errorf("NATS context %q authenticates with an nkey, which esimctl does not read: use a .creds file", name)
	}
	n := config.NATS{URL: c.URL, Creds: c.Creds, TLSCA: c.TLSCA, TLSCert: c.TLSCert, TLSKey: c.TLSKey}
	if c.User != "" || c.Token != "" {
		var urls []string
		for _, raw := range strings.Split(c.URL, ",") {
			u, err := url.Parse(strings.TrimSpace(raw))
			if err != nil || u.Host == "" {
				return config.NATS{}, fmt.Errorf("NATS context %q: url %q is not a URL", name, raw)
			}
			if u.User == nil {
				if c.Token != "" {
					u.User = url.User(c.Token)
				} else {
					u.User = url.UserPassword(c.User, c.Password)
				}
			}
			urls = append(urls, u.String())
		}
		n.URL = strings.Join(urls, ",")
	}
	return n, nil
}

// connect reaches NATS within the connect timeout.
func (a *app) connect(ctx context.Context, cmd *cobra.Command) (*nats.Conn, jetstream.JetStream, error) {
	n, err := a.natsConfig(cmd.Flags())
	if err != nil {
		return nil, nil, err
	}
	cctx, cancel := context.WithTimeout(ctx, a.connectTimeout)
	defer cancel()
	nc, err := broker.Connect(cctx, n, "esimctl", a.log)
	if err != nil {
		if ctx.Err() != nil {
			return nil, nil, ErrInterrupted
		}
		return nil, nil, opErr(fmt.Errorf("cannot reach NATS at %s within %s (set NATS_URL or --nats-url): %v", n.Redacted(), a.connectTimeout, err))
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, nil, opErr(err)
	}
	return nc, js, nil
}

// closeConn closes nc without the disconnect warning broker.Connect's
// handler would log for a close esimctl asked for.
func closeConn(nc *nats.Conn) {
	nc.SetDisconnectErrHandler(nil)
	nc.Close()
}

// exactlyOne is a positional-argument check that words its error for humans.
func exactlyOne(what string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		switch {
		case len(args) == 0:
			return usagef("%s: want %s (see %s --help)", cmd.Name(), what, cmd.CommandPath())
		case len(args) > 1:
			return usagef("%s: want one argument, %s; got %d: %s", cmd.Name(), what, len(args), strings.Join(args, " "))
		}
		return nil
	}
}

var actionNames = command.Names()

// replicasFrom reads STREAM_REPLICAS for the bucket esimctl may create.
func replicasFrom(getenv func(string) string) int {
	if n, err := strconv.Atoi(strings.TrimSpace(getenv("STREAM_REPLICAS"))); err == nil && n > 0 {
		return n
	}
	return 1
}
