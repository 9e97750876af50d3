package esimctl

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"

	"github.com/esim-pipeline/thingspace-esim/internal/broker"
	"github.com/esim-pipeline/thingspace-esim/internal/command"
)

// followFlags are the flags submit and watch share.
type followFlags struct {
	out   string
	every time.Duration
}

func (f *followFlags) declare(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.out, "out", "", "results CSV to write when every device is final [default results-<run id>.csv]")
	cmd.Flags().DurationVar(&f.every, "progress-every", 5*time.Second, "how often a progress line is printed when stderr is not a terminal")
}

type submitFlags struct {
	followFlags
	action, account, smsrOid, servicePlan, reasonCode string
	etfWaiver, noWait                                 bool
	replicas                                          int
}

func (a *app) submitCmd() *cobra.Command {
	var f submitFlags
	cmd := &cobra.Command{
		Use:   "submit --action ACTION --account NAME [options] devices.csv",
		Short: "Publish the SIMs of a CSV as commands, follow them and write the results",
		Long: `submit reads a CSV whose header names columns iccid, eid and imei (any case; other columns
are ignored), publishes its devices as commands on thingspace.profile.commands.<action> in
chunks of at most 1,000, prints the run id ("run <id>", the first line on stderr), follows
the devices' status events with progress on stderr, and when every device is final writes
the results CSV (iccid,eid,imei,status,reason_code,reason_message,request_id,occurred_at),
one row per input row, in input order.

The run id derives from the file's content, the action, the account and the options: the
same submission again resumes the same run (chunks already published are not published
again, even after the stream's duplicate window) and writes the same results.

Identifiers each action sends: ` + identifiersHelp() + `. Other columns of the file are not sent.`,
		Example: `  esimctl submit --action enable --account 0000123456-00001 \
      --smsr-oid 1.3.6.1.4.1.31746.1.500.200.101.5 examples/devices.csv
  esimctl submit --action deactivate --account 0000123456-00001 --reason-code FF --etf-waiver devices.csv
  esimctl submit --action suspend --account 0000123456-00001 --no-wait devices.csv`,
		Args: exactlyOne("the devices file (a CSV)"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if !cmd.Flags().Changed("replicas") {
				f.replicas = replicasFrom(a.getenv)
			}
			return a.submit(cmd, f, args[0])
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.action, "action", "", command.OneOf()+" (required)")
	fl.StringVar(&f.account, "account", "", "ThingSpace account name, e.g. 0000123456-00001 (required)")
	fl.StringVar(&f.smsrOid, "smsr-oid", "", "SM-SR object identifier ("+command.Taking("smsrOid")+": required)")
	fl.StringVar(&f.servicePlan, "service-plan", "", "service plan ("+command.Taking("servicePlan")+")")
	fl.BoolVar(&f.etfWaiver, "etf-waiver", false, "waive the early termination fee ("+command.Taking("etfWaiver")+"; --etf-waiver=false sends false)")
	fl.StringVar(&f.reasonCode, "reason-code", "", "2-character reason code ("+command.Taking("reasonCode")+")")
	fl.BoolVar(&f.noWait, "no-wait", false, "publish, print the run id and exit 0 without following")
	fl.IntVar(&f.replicas, "replicas", 1, "replicas of the "+RunBucket+" bucket if esimctl creates it (env STREAM_REPLICAS)")
	f.declare(cmd)
	_ = cmd.RegisterFlagCompletionFunc("action", cobra.FixedCompletions(actionNames, cobra.ShellCompDirectiveNoFileComp))
	_ = cmd.MarkFlagFilename("out", "csv")
	cmd.ValidArgsFunction = func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
		return []string{"csv"}, cobra.ShellCompDirectiveFilterFileExt
	}
	return cmd
}

// submit is everything of `esimctl submit` after flag parsing. Usage and
// file problems return before anything is published.
func (a *app) submit(cmd *cobra.Command, f submitFlags, path string) error {
	ctx := cmd.Context()
	if strings.TrimSpace(f.action) == "" {
		return usagef("--action is required: one of %s", strings.Join(actionNames, ", "))
	}
	action, err := command.ParseAction(f.action)
	if err != nil {
		return usagef("--action %q is not an action: want one of %s", f.action, strings.Join(actionNames, ", "))
	}
	spec := Spec{Action: action, AccountName: strings.TrimSpace(f.account), Options: command.Options{
		SmsrOid: strings.TrimSpace(f.smsrOid), ServicePlan: strings.TrimSpace(f.servicePlan), ReasonCode: strings.TrimSpace(f.reasonCode)}}
	if cmd.Flags().Changed("etf-waiver") {
		w := f.etfWaiver
		spec.Options.EtfWaiver = &w
	}
	if err := spec.Check(); err != nil {
		return err
	}
	content, err := os.ReadFile(path)
	if err != nil {
		msg := err.Error()
		if errors.Is(err, fs.ErrNotExist) {
			msg = "no such file"
		}
		return &FileError{Path: path, Msg: "cannot read the devices file: " + msg}
	}
	in, err := ParseCSV(path, content)
	if err != nil {
		return err
	}
	runID := RunID(spec, content)
	plan, err := NewPlan(runID, spec, in.Columns, in.Rows, path)
	if err != nil {
		return err
	}

	fmt.Fprintf(a.stderr, "run %s\n", runID)
	for _, w := range in.Warnings {
		fmt.Fprintln(a.stderr, "warning:", w)
	}
	for _, k := range in.Columns {
		if !containsKind(action.Kinds(), k) {
			fmt.Fprintf(a.stderr, "note: %s takes no %s; the %s column is only copied to the results\n", action, k, k)
		}
	}
	if r := plan.Repeats(); r > 0 {
		fmt.Fprintf(a.stderr, "note: %d rows name a device an earlier row names; each device is sent once and every row reports it\n", r)
	}

	nc, js, err := a.connect(ctx, cmd)
	if err != nil {
		return err
	}
	defer closeConn(nc)
	statusStream, err := needStreams(ctx, js)
	if err != nil {
		return err
	}
	runs, err := OpenRuns(ctx, js, f.replicas)
	if err != nil {
		return opErr(err)
	}
	rec, err := runs.Get(ctx, runID)
	switch {
	case errors.Is(err, ErrNoRun):
		info, ierr := statusStream.Info(ctx)
		if ierr != nil {
			return opErr(fmt.Errorf("stream %s: %w", broker.StatusStream, ierr))
		}
		rec = &Record{RunID: runID, Action: string(action), AccountName: spec.AccountName,
			SmsrOid: spec.Options.SmsrOid, ServicePlan: spec.Options.ServicePlan, EtfWaiver: spec.Options.EtfWaiver,
			ReasonCode: spec.Options.ReasonCode, File: path, Rows: len(plan.Rows), Devices: len(plan.Devices),
			Chunks: plan.Chunks(), StartedAt: time.Now().UTC(), StatusStartSeq: info.State.LastSeq + 1}
		var created bool
		rec, created, err = runs.Create(ctx, rec, plan.Rows)
		if err != nil {
			return opErr(err)
		}
		if !created {
			fmt.Fprintf(a.stderr, "resuming run %s, started %s\n", runID, rec.StartedAt.Format(time.RFC3339))
		}
	case err != nil:
		return opErr(err)
	default:
		fmt.Fprintf(a.stderr, "resuming run %s, started %s\n", runID, rec.StartedAt.Format(time.RFC3339))
	}
	if rec.Devices != len(plan.Devices) || rec.Chunks != plan.Chunks() || rec.Action != string(action) {
		return opErr(fmt.Errorf("run %s: the record (%s, %d devices, %d commands) does not match this file (%s, %d devices, %d commands)",
			runID, rec.Action, rec.Devices, rec.Chunks, action, len(plan.Devices), plan.Chunks()))
	}

	// Publishing is the work: Ctrl-C waits for it (a few commands, each
	// acknowledged by the stream), and only then stops following.
	pctx := context.WithoutCancel(ctx)
	if err := a.publish(pctx, js, runs, plan, rec); err != nil {
		return opErr(err)
	}
	if f.noWait {
		fmt.Fprintf(a.stderr, "not waiting; follow it with: esimctl watch %s\n", runID)
		a.code = ExitOK
		return nil
	}
	return a.followAndReport(ctx, js, plan, rec, f.followFlags)
}

func containsKind[T comparable](s []T, v T) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// needStreams checks that the services created their streams.
func needStreams(ctx context.Context, js jetstream.JetStream) (jetstream.Stream, error) {
	for _, name := range []string{broker.CommandStream, broker.StatusStream} {
		if _, err := js.Stream(ctx, name); err != nil {
			if errors.Is(err, jetstream.ErrStreamNotFound) {
				return nil, opErr(fmt.Errorf("stream %s does not exist: start the dispatcher and the callback-ingest (make dev) first", name))
			}
			if ctx.Err() != nil {
				return nil, ErrInterrupted
			}
			return nil, opErr(fmt.Errorf("stream %s: %w", name, err))
		}
	}
	return js.Stream(ctx, broker.StatusStream)
}

// publish sends the chunks not yet recorded as published, recording each
// after the stream acknowledged it.
func (a *app) publish(ctx context.Context, js jetstream.JetStream, runs *Runs, p *Plan, rec *Record) error {
	done, err := runs.Published(ctx, rec)
	if err != nil {
		return err
	}
	sent, skipped, devices := 0, 0, 0
	for n := range p.Chunks() {
		if done[n] {
			skipped++
			continue
		}
		body, err := p.Body(n)
		if err != nil {
			return err
		}
		m := nats.NewMsg(p.Spec.Action.Subject())
		m.Data = body
		m.Header.Set(nats.MsgIdHdr, p.CommandID(n))
		actx, cancel := context.WithTimeout(ctx, 10*time.Second)
		ack, err := js.PublishMsg(actx, m)
		cancel()
		if err != nil {
			return fmt.Errorf("publishing command %s: %w", p.CommandID(n), err)
		}
		count := len(p.chunk(n))
		if err := runs.MarkPublished(ctx, p.RunID, n, Published{CommandID: p.CommandID(n), Sequence: ack.Sequence,
			Duplicate: ack.Duplicate, Devices: count, PublishedAt: time.Now().UTC()}); err != nil {
			return err
		}
		a.log.Debug().Str("command_id", p.CommandID(n)).Uint64("seq", ack.Sequence).Bool("duplicate", ack.Duplicate).Msg("published")
		sent++
		devices += count
	}
	switch {
	case sent == 0:
		fmt.Fprintf(a.stderr, "all %d commands of the run were published before; nothing sent again\n", skipped)
	case skipped > 0:
		fmt.Fprintf(a.stderr, "published %d commands (%d devices) to %s; %d were published before\n", sent, devices, p.Spec.Action.Subject(), skipped)
	default:
		fmt.Fprintf(a.stderr, "published %d commands (%d devices) to %s\n", sent, devices, p.Spec.Action.Subject())
	}
	return nil
}

// followAndReport follows the run to its end, writes the results and sets
// the exit code.
func (a *app) followAndReport(ctx context.Context, js jetstream.JetStream, p *Plan, rec *Record, f followFlags) error {
	out := f.out
	if out == "" {
		out = "results-" + p.RunID + ".csv"
	}
	var prog reporter
	if a.tty {
		prog = newBar(a.stderr, p.RunID, len(p.Devices))
	} else {
		prog = newPlain(a.stderr, p.RunID, max(f.every, 10*time.Millisecond))
	}
	t, err := follow(ctx, js, p, rec, prog, a.log)
	if errors.Is(err, ErrInterrupted) {
		if t == nil { // interrupted before the first event was read
			t = newTally(p)
		}
		fmt.Fprintf(a.stderr, "stopped following run %s at %d/%d final (%s); the work goes on: esimctl watch %s\n",
			p.RunID, t.Final(), t.Total(), t.Summary(), p.RunID)
		return fmt.Errorf("%w%w", err, errSaid)
	}
	if err != nil {
		return opErr(err)
	}
	if err := t.WriteResults(out); err != nil {
		return opErr(err)
	}
	fmt.Fprintf(a.stderr, "run %s: %d devices: %s; results in %s\n", p.RunID, t.Total(), t.Summary(), out)
	if t.Succeeded() {
		a.code = ExitOK
		return nil
	}
	fmt.Fprintf(a.stderr, "did not succeed: %s\n", strings.Join(t.Reasons(), ", "))
	a.code = ExitNotAll
	return nil
}

func (a *app) watchCmd() *cobra.Command {
	var f followFlags
	cmd := &cobra.Command{
		Use:   "watch RUN_ID",
		Short: "Follow a submitted run again, from its record in NATS, and write its results",
		Long: `watch follows a run that submit started (after Ctrl-C, --no-wait, or on another machine):
same progress, same results file, same exit codes.`,
		Example: `  esimctl watch 3f9c2a0d11b7e845 --out results.csv`,
		Args:    exactlyOne("the run id that submit printed"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.watch(cmd, f, strings.TrimSpace(args[0]))
		},
	}
	f.declare(cmd)
	_ = cmd.MarkFlagFilename("out", "csv")
	return cmd
}

func (a *app) watch(cmd *cobra.Command, f followFlags, runID string) error {
	ctx := cmd.Context()
	if runID == "" || strings.ContainsAny(runID, ".*> \t") {
		return usagef("watch: %q is not a run id", runID)
	}
	fmt.Fprintf(a.stderr, "run %s\n", runID)
	nc, js, err := a.connect(ctx, cmd)
	if err != nil {
		return err
	}
	defer closeConn(nc)
	if _, err := needStreams(ctx, js); err != nil {
		return err
	}
	kv, err := js.KeyValue(ctx, RunBucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return usagef("no run %s: there is no %s bucket yet (no run was ever submitted here)", runID, RunBucket)
	}
	if err != nil {
		return opErr(err)
	}
	runs := &Runs{kv: kv}
	rec, err := runs.Get(ctx, runID)
	if errors.Is(err, ErrNoRun) {
		return usagef("no run %s in bucket %s", runID, RunBucket)
	}
	if err != nil {
		return opErr(err)
	}
	rows, err := runs.Rows(ctx, rec)
	if err != nil {
		return opErr(err)
	}
	plan, err := NewPlan(rec.RunID, rec.Spec(), nil, rows, rec.File)
	if err != nil {
		return opErr(fmt.Errorf("run %s: %w", runID, err))
	}
	done, err := runs.Published(ctx, rec)
	if err != nil {
		return opErr(err)
	}
	published := 0
	for _, d := range done {
		if d {
			published++
		}
	}
	if published < rec.Chunks {
		return opErr(fmt.Errorf("run %s: only %d of its %d commands were published (its submit stopped while publishing); submit %s again with the same options to publish the rest",
			runID, published, rec.Chunks, rec.File))
	}
	fmt.Fprintf(a.stderr, "%s for account %s: %d devices from %s, started %s\n",
		rec.Action, rec.AccountName, rec.Devices, rec.File, rec.StartedAt.Format(time.RFC3339))
	return a.followAndReport(ctx, js, plan, rec, f)
}

// identifiersHelp says, from the action table, which identifiers each
// action sends: "enable, disable, delete: eid and iccid; ...".
func identifiersHelp() string {
	var groups []string
	var names []string
	last := ""
	flush := func() {
		if len(names) > 0 {
			groups = append(groups, strings.Join(names, ", ")+": "+last)
		}
	}
	for _, a := range command.Actions {
		sp := a.Spec()
		kinds := make([]string, 0, len(sp.Kinds))
		for _, k := range sp.Kinds {
			s := string(k)
			if !slices.Contains(sp.Required, k) {
				s += " (when known)"
			}
			kinds = append(kinds, s)
		}
		said := strings.Join(kinds, " and ")
		if said != last {
			flush()
			names, last = nil, said
		}
		names = append(names, string(a))
	}
	flush()
	return strings.Join(groups, "; ")
}
