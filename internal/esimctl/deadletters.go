package esimctl

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"

	"github.com/esim-pipeline/thingspace-esim/internal/broker"
)

// deadLetter is one message of THINGSPACE_DEADLETTER.
type deadLetter struct {
	Seq     uint64
	Subject string // thingspace.profile.deadletter.commands or .callbacks
	Stored  time.Time
	Header  nats.Header
	Data    []byte // empty when read headers only
}

func (d deadLetter) from() string   { return d.Header.Get(broker.HeaderDeadletterSubject) }
func (d deadLetter) reason() string { return d.Header.Get(broker.HeaderDeadletterReason) }

// replayKey is the key in RunBucket recording that dead letter seq was
// replayed: the mark that makes replay publish it once.
func replayKey(seq uint64) string { return "deadletter." + strconv.FormatUint(seq, 10) }

// replayMark is the value under replayKey.
type replayMark struct {
	Stored     time.Time `json:"stored"` // the dead letter's, telling it from one of a recreated stream
	To         string    `json:"to"`
	MsgID      string    `json:"msgId"`
	ReplayedAt time.Time `json:"replayedAt"`
}

func (a *app) deadlettersCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "deadletters",
		Short: "List, show and replay the dead letters (commands and callbacks the pipeline could not process)",
		Long: `The dispatcher and the callback-ingest keep what they cannot process in the stream
` + broker.DeadLetterStream + `: undecodable commands and commands that exhausted their deliveries on
` + broker.DeadLetterCommands + `, unparseable callbacks on ` + broker.DeadLetterCallbacks + `.
Each keeps the original bytes, the reason (header ` + broker.HeaderDeadletterReason + `) and where it
came from (` + broker.HeaderDeadletterSubject + `).

list and show only read (the operator's NATS user may run them); replay publishes, as the
esimctl user. A dead letter is replayed once: the replay is recorded in the bucket
` + RunBucket + `, and a replayed message that fails again is dead-lettered with the header
` + broker.HeaderDeadletterReplayed + `, which replay refuses.`,
		Example: `  esimctl deadletters list --since 24h
  esimctl deadletters show 17
  esimctl deadletters replay 17
  esimctl deadletters replay --reason "exhausted its deliveries" --since 2026-11-20T00:00:00Z --dry-run`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return usagef("deadletters: want a verb: list, show SEQ or replay (see esimctl deadletters --help)")
		},
	}
	cmd.AddCommand(a.deadlettersListCmd(), a.deadlettersShowCmd(), a.deadlettersReplayCmd())
	return cmd
}

// parseSince reads --since: an RFC 3339 time, or a Go duration back from now.
func parseSince(s string, now time.Time) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	if d, err := time.ParseDuration(s); err == nil && d > 0 {
		return now.Add(-d), nil
	}
	return time.Time{}, usagef("--since %q: want an RFC 3339 time (2026-11-20T00:00:00Z) or a duration back from now (24h, 90m)", s)
}

// connectDeadLetters reaches NATS and opens the dead-letter stream; the
// caller closes nc.
func (a *app) connectDeadLetters(ctx context.Context, cmd *cobra.Command) (*nats.Conn, jetstream.JetStream, jetstream.Stream, error) {
	nc, js, err := a.connect(ctx, cmd)
	if err != nil {
		return nil, nil, nil, err
	}
	st, err := js.Stream(ctx, broker.DeadLetterStream)
	switch {
	case err == nil:
		return nc, js, st, nil
	case errors.Is(err, jetstream.ErrStreamNotFound):
		err = opErr(fmt.Errorf("stream %s does not exist: start the dispatcher and the callback-ingest (make dev) first", broker.DeadLetterStream))
	case ctx.Err() != nil:
		err = ErrInterrupted
	default:
		err = opErr(fmt.Errorf("stream %s: %w", broker.DeadLetterStream, err))
	}
	closeConn(nc)
	return nil, nil, nil, err
}

// scanDeadLetters calls fn for each dead letter stored at or after since
// (all when zero), oldest first, up to the last one stored at the start.
func scanDeadLetters(ctx context.Context, st jetstream.Stream, since time.Time, headersOnly bool, fn func(deadLetter) error) error {
	info, err := st.Info(ctx)
	if err != nil {
		return opErr(fmt.Errorf("stream %s: %w", broker.DeadLetterStream, err))
	}
	if info.State.Msgs == 0 {
		return nil
	}
	last := info.State.LastSeq
	cfg := jetstream.OrderedConsumerConfig{FilterSubjects: []string{broker.DeadLetterSubjects}, HeadersOnly: headersOnly}
	if !since.IsZero() {
		cfg.DeliverPolicy, cfg.OptStartTime = jetstream.DeliverByStartTimePolicy, &since
	}
	cons, err := st.OrderedConsumer(ctx, cfg)
	if err != nil {
		return opErr(fmt.Errorf("reading %s: %w", broker.DeadLetterStream, err))
	}
	for {
		batch, err := cons.Fetch(500, jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			return opErr(fmt.Errorf("reading %s: %w", broker.DeadLetterStream, err))
		}
		n := 0
		for m := range batch.Messages() {
			n++
			meta, err := m.Metadata()
			if err != nil {
				return opErr(fmt.Errorf("reading %s: %w", broker.DeadLetterStream, err))
			}
			d := deadLetter{Seq: meta.Sequence.Stream, Subject: m.Subject(), Stored: meta.Timestamp, Header: m.Headers()}
			if !headersOnly {
				d.Data = m.Data()
			}
			if err := fn(d); err != nil {
				return err
			}
			if meta.Sequence.Stream >= last || meta.NumPending == 0 {
				return nil
			}
		}
		if err := batch.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) {
			return opErr(fmt.Errorf("reading %s: %w", broker.DeadLetterStream, err))
		}
		if n == 0 {
			return nil // the rest aged out meanwhile
		}
	}
}

// replayedSeqs lists the dead letters the run bucket records as replayed;
// none when the bucket does not exist yet.
func replayedSeqs(ctx context.Context, js jetstream.JetStream) (map[uint64]bool, error) {
	st, err := js.Stream(ctx, "KV_"+RunBucket)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return map[uint64]bool{}, nil
	}
	if err != nil {
		return nil, opErr(fmt.Errorf("bucket %s: %w", RunBucket, err))
	}
	prefix := "$KV." + RunBucket + ".deadletter."
	info, err := st.Info(ctx, jetstream.WithSubjectFilter(prefix+"*"))
	if err != nil {
		return nil, opErr(fmt.Errorf("bucket %s: %w", RunBucket, err))
	}
	out := make(map[uint64]bool, len(info.State.Subjects))
	for subject := range info.State.Subjects {
		if n, err := strconv.ParseUint(strings.TrimPrefix(subject, prefix), 10, 64); err == nil {
			out[n] = true
		}
	}
	return out, nil
}

// DeadLetterGroup is one line of `esimctl deadletters list`: the dead
// letters of one subject and reason.
type DeadLetterGroup struct {
	Subject   string    `json:"subject"`
	From      string    `json:"from"`
	Reason    string    `json:"reason"`
	Count     int       `json:"count"`
	Replayed  int       `json:"replayed"`  // replayed already
	Replays   int       `json:"replays"`   // dead letters of replayed messages: replay refuses them
	Newest    time.Time `json:"newest"`    // when the newest was stored
	Sequences []uint64  `json:"sequences"` // newest first
}

func (a *app) deadlettersListCmd() *cobra.Command {
	var since string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "list [--since T]",
		Short: "Count the dead letters per subject and reason, newest first",
		Long: `list reads ` + broker.DeadLetterStream + ` (headers only) and prints one line per dead-letter
subject and reason: how many, how many were replayed already, when the newest was stored and
their sequences (newest first; show and replay take them). The groups with the newest dead
letter come first.`,
		Example: `  esimctl deadletters list
  esimctl deadletters list --since 2026-11-20T00:00:00Z
  esimctl deadletters list --since 2h --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			t, err := parseSince(since, time.Now())
			if err != nil {
				return err
			}
			return a.deadlettersList(cmd, t, asJSON)
		},
	}
	cmd.Flags().StringVar(&since, "since", "", "only dead letters stored at or after this RFC 3339 time, or this long ago (24h)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the groups as JSON")
	return cmd
}

// maxListedSeqs is how many sequences a list line names.
const maxListedSeqs = 8

func (a *app) deadlettersList(cmd *cobra.Command, since time.Time, asJSON bool) error {
	ctx := cmd.Context()
	nc, js, st, err := a.connectDeadLetters(ctx, cmd)
	if err != nil {
		return err
	}
	defer closeConn(nc)
	replayed, err := replayedSeqs(ctx, js)
	if err != nil {
		return err
	}
	groups := map[[2]string]*DeadLetterGroup{}
	total := 0
	if err := scanDeadLetters(ctx, st, since, true, func(d deadLetter) error {
		total++
		k := [2]string{d.Subject, d.reason()}
		g := groups[k]
		if g == nil {
			g = &DeadLetterGroup{Subject: d.Subject, From: d.from(), Reason: d.reason()}
			groups[k] = g
		}
		g.Count++
		if replayed[d.Seq] {
			g.Replayed++
		}
		if d.Header.Get(broker.HeaderDeadletterReplayed) != "" {
			g.Replays++
		}
		if d.Stored.After(g.Newest) {
			g.Newest = d.Stored
		}
		g.Sequences = append(g.Sequences, d.Seq)
		if g.From != d.from() {
			g.From = "(several)"
		}
		return nil
	}); err != nil {
		return err
	}
	list := make([]*DeadLetterGroup, 0, len(groups))
	for _, g := range groups {
		slices.Reverse(g.Sequences)
		list = append(list, g)
	}
	sort.Slice(list, func(i, j int) bool { return list[i].Sequences[0] > list[j].Sequences[0] })
	if asJSON {
		enc := json.NewEncoder(a.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(list)
	}
	if total == 0 {
		if since.IsZero() {
			fmt.Fprintf(a.stderr, "no dead letters in %s\n", broker.DeadLetterStream)
		} else {
			fmt.Fprintf(a.stderr, "no dead letters in %s since %s\n", broker.DeadLetterStream, since.UTC().Format(time.RFC3339))
		}
		return nil
	}
	tw := tabwriter.NewWriter(a.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SUBJECT\tFROM\tCOUNT\tREPLAYED\tNEWEST\tREASON\tSEQUENCES")
	for _, g := range list {
		seqs := make([]string, 0, maxListedSeqs)
		for i, s := range g.Sequences {
			if i == maxListedSeqs {
				seqs = append(seqs, "…")
				break
			}
			seqs = append(seqs, strconv.FormatUint(s, 10))
		}
		replays := strconv.Itoa(g.Replayed)
		if g.Replays > 0 {
			replays += fmt.Sprintf(" (%d failed again)", g.Replays)
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\t%s\n", strings.TrimPrefix(g.Subject, "thingspace.profile."), g.From, g.Count, replays,
			g.Newest.UTC().Format(time.RFC3339), clip(g.Reason, 80), strings.Join(seqs, ","))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(a.stderr, "%d dead letters in %d groups; esimctl deadletters show SEQ for one\n", total, len(list))
	return nil
}

// clip shortens s to n runes.
func clip(s string, n int) string {
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	r := []rune(s)
	return string(r[:n-1]) + "…"
}

func (a *app) deadlettersShowCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "show SEQ",
		Short: "Show one dead letter: where it came from, why, its headers and its body",
		Long: `show prints the dead letter stored at sequence SEQ of ` + broker.DeadLetterStream + `: its
subject, where it came from, the reason, whether it was replayed, its headers and its body
(JSON pretty-printed). Credentials are never shown: callback credentials and device
credentials are removed by the ingest before anything is stored, and show masks them again
(username, password, deviceCredential, tokens, secrets; headers of that kind) wherever they are.`,
		Example: `  esimctl deadletters show 17`,
		Args:    exactlyOne("the dead letter's sequence (esimctl deadletters list shows them)"),
		RunE: func(cmd *cobra.Command, args []string) error {
			seq, err := parseSeq(args[0])
			if err != nil {
				return err
			}
			return a.deadlettersShow(cmd, seq)
		},
	}
}

func parseSeq(s string) (uint64, error) {
	n, err := strconv.ParseUint(strings.TrimPrefix(strings.TrimSpace(s), "#"), 10, 64)
	if err != nil || n == 0 {
		return 0, usagef("%q is not a dead letter's sequence: want a positive number (esimctl deadletters list shows them)", s)
	}
	return n, nil
}

// getDeadLetter reads the dead letter at seq.
func getDeadLetter(ctx context.Context, st jetstream.Stream, seq uint64) (deadLetter, error) {
	m, err := st.GetMsg(ctx, seq)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return deadLetter{}, usagef("no dead letter %d in %s (aged out, or never stored)", seq, broker.DeadLetterStream)
	}
	if err != nil {
		if ctx.Err() != nil {
			return deadLetter{}, ErrInterrupted
		}
		return deadLetter{}, opErr(fmt.Errorf("reading dead letter %d: %w", seq, err))
	}
	return deadLetter{Seq: m.Sequence, Subject: m.Subject, Stored: m.Time, Header: m.Header, Data: m.Data}, nil
}

// replayState says whether d was replayed (mark non-nil) or may be.
func replayState(ctx context.Context, kv jetstream.KeyValue, d deadLetter) (*replayMark, error) {
	if kv == nil {
		return nil, nil
	}
	e, err := kv.Get(ctx, replayKey(d.Seq))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, opErr(fmt.Errorf("bucket %s: %w", RunBucket, err))
	}
	var m replayMark
	if json.Unmarshal(e.Value(), &m) != nil || !m.Stored.Equal(d.Stored) {
		return nil, nil // another stream's dead letter of that number
	}
	return &m, nil
}

func (a *app) deadlettersShow(cmd *cobra.Command, seq uint64) error {
	ctx := cmd.Context()
	nc, js, st, err := a.connectDeadLetters(ctx, cmd)
	if err != nil {
		return err
	}
	defer closeConn(nc)
	d, err := getDeadLetter(ctx, st, seq)
	if err != nil {
		return err
	}
	kv, err := js.KeyValue(ctx, RunBucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		kv, err = nil, nil
	}
	if err != nil {
		return opErr(fmt.Errorf("bucket %s: %w", RunBucket, err))
	}
	mark, err := replayState(ctx, kv, d)
	if err != nil {
		return err
	}
	w := a.stdout
	fmt.Fprintf(w, "dead letter %d on %s, stored %s\n", d.Seq, d.Subject, d.Stored.UTC().Format(time.RFC3339Nano))
	fmt.Fprintf(w, "from:    %s\n", dash(d.from()))
	fmt.Fprintf(w, "reason:  %s\n", dash(d.reason()))
	switch err := broker.Replayable(d.Header); {
	case mark != nil:
		fmt.Fprintf(w, "replay:  replayed %s to %s (Nats-Msg-Id %s); not replayed again\n", mark.ReplayedAt.UTC().Format(time.RFC3339), mark.To, mark.MsgID)
	case err != nil:
		fmt.Fprintf(w, "replay:  refused: %s\n", strings.TrimPrefix(err.Error(), broker.ErrNotReplayable.Error()+": "))
	default:
		fmt.Fprintf(w, "replay:  not yet: esimctl deadletters replay %d\n", d.Seq)
	}
	fmt.Fprintln(w, "headers:")
	names := make([]string, 0, len(d.Header))
	for k := range d.Header {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		for _, v := range d.Header[k] {
			if secretName(k) {
				v = redacted
			}
			fmt.Fprintf(w, "  %s: %s\n", k, v)
		}
	}
	writeBody(w, d.Data)
	return nil
}

// redacted stands for a credential's value.
const redacted = "[redacted]"

// secretName reports whether a header or JSON field name names a
// credential.
func secretName(name string) bool {
	n := strings.ToLower(strings.NewReplacer("-", "", "_", "").Replace(name))
	switch n {
	case "username", "user", "password", "passwd", "devicecredential", "authorization", "cookie", "proxyauthorization":
		return true
	}
	return strings.Contains(n, "password") || strings.Contains(n, "secret") || strings.Contains(n, "token") || strings.Contains(n, "credential")
}

// maxShownBody bounds the body show prints.
const maxShownBody = 64 << 10

// writeBody prints body: JSON indented with credentials masked; anything
// else as text, credentials masked as far as they can be found, bytes that
// are not printable escaped.
func writeBody(w io.Writer, body []byte) {
	if len(body) == 0 {
		fmt.Fprintln(w, "body: empty")
		return
	}
	var v any
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	if err := dec.Decode(&v); err == nil && !dec.More() {
		var out bytes.Buffer
		enc := json.NewEncoder(&out)
		enc.SetEscapeHTML(false)
		enc.SetIndent("", "  ")
		if enc.Encode(mask(v)) == nil {
			fmt.Fprintf(w, "body (%d bytes, JSON):\n%s", len(body), out.Bytes())
			return
		}
	}
	shown := body
	if len(shown) > maxShownBody {
		shown = shown[:maxShownBody]
	}
	fmt.Fprintf(w, "body (%d bytes, not JSON):\n%s\n", len(body), printable(maskText(shown)))
	if len(shown) < len(body) {
		fmt.Fprintf(w, "… %d more bytes not shown\n", len(body)-len(shown))
	}
}

// mask replaces the value of every credential field, at any depth.
func mask(v any) any {
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			if secretName(k) {
				x[k] = redacted
				continue
			}
			x[k] = mask(e)
		}
	case []any:
		for i, e := range x {
			x[i] = mask(e)
		}
	}
	return v
}

// textSecret finds "name": value pairs of credential fields in text that
// is not JSON (a broken callback): a string, an object without nested
// objects, or a bare word.
var textSecret = regexp.MustCompile(`(?i)("(?:user_?name|password|passwd|device_?credential|client_?secret|secret|(?:access_|refresh_|session_?)?token)"\s*:\s*)("(?:[^"\\]|\\.)*"?|\{[^{}]*\}?|[^,}\s]+)`)

func maskText(b []byte) []byte {
	return textSecret.ReplaceAll(b, []byte(`$1"`+redacted+`"`))
}

// printable escapes what a terminal should not be sent: control characters
// (but newline and tab) and invalid UTF-8.
func printable(b []byte) string {
	var s strings.Builder
	for len(b) > 0 {
		r, n := utf8.DecodeRune(b)
		switch {
		case r == utf8.RuneError && n <= 1:
			fmt.Fprintf(&s, `\x%02x`, b[0])
		case r == '\n' || r == '\t' || unicode.IsPrint(r):
			s.WriteRune(r)
		default:
			s.WriteString(strconv.QuoteRune(r)[1 : len(strconv.QuoteRune(r))-1])
		}
		b = b[n:]
	}
	return s.String()
}

type replayFlags struct {
	reason, since string
	dry           bool
	replicas      int
}

func (a *app) deadlettersReplayCmd() *cobra.Command {
	var f replayFlags
	cmd := &cobra.Command{
		Use:   "replay SEQ | --reason R | --since T",
		Short: "Publish dead letters again to where they came from, once each",
		Long: `replay republishes dead letters (the original bytes and headers) to the subject they came
from (header ` + broker.HeaderDeadletterSubject + `): a command to its thingspace.profile.commands.<action>
subject, a callback to ` + broker.CallbackSubject + `, for the dispatcher or the ingest to process
again, after a fix. Choose one dead letter by its sequence, or all whose reason contains R
(--reason), or all stored since T (--since), or both.

Each is replayed once: the replay is recorded in the bucket ` + RunBucket + ` (a second replay
says so and publishes nothing) and carries the header ` + broker.HeaderDeadletterReplayed + ` = SEQ
and Nats-Msg-Id deadletter-SEQ (for a command without a commandId in its body, also its
command id). A replayed message that fails again becomes a new dead letter with that
header, and replay refuses it: no loop. Exit 0 when every one chosen has been replayed
(now or before), 1 when one was refused or could not be published.`,
		Example: `  esimctl deadletters replay 17
  esimctl deadletters replay --reason "exhausted its deliveries" --dry-run
  esimctl deadletters replay --since 2026-11-20T00:00:00Z`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if !cmd.Flags().Changed("replicas") {
				f.replicas = replicasFrom(a.getenv)
			}
			var seq uint64
			if len(args) == 1 {
				if f.reason != "" || f.since != "" {
					return usagef("replay: give a sequence or --reason/--since, not both")
				}
				n, err := parseSeq(args[0])
				if err != nil {
					return err
				}
				seq = n
			} else if strings.TrimSpace(f.reason) == "" && f.since == "" {
				return usagef("replay: want a dead letter's sequence, --reason R or --since T (esimctl deadletters list shows them)")
			}
			since, err := parseSince(f.since, time.Now())
			if err != nil {
				return err
			}
			return a.deadlettersReplay(cmd, seq, strings.TrimSpace(f.reason), since, f)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.reason, "reason", "", "replay the dead letters whose reason contains this text (case-insensitive)")
	fl.StringVar(&f.since, "since", "", "replay the dead letters stored at or after this RFC 3339 time, or this long ago (24h)")
	fl.BoolVar(&f.dry, "dry-run", false, "say what would be replayed, publish nothing")
	fl.IntVar(&f.replicas, "replicas", 1, "replicas of the "+RunBucket+" bucket if esimctl creates it (env STREAM_REPLICAS)")
	return cmd
}

// replayOutcome is what became of one dead letter chosen for replay.
type replayOutcome int

const (
	replayedNow replayOutcome = iota
	replayedBefore
	replayRefused
	replayFailed
	replayWould // --dry-run
)

func (a *app) deadlettersReplay(cmd *cobra.Command, seq uint64, reason string, since time.Time, f replayFlags) error {
	ctx := cmd.Context()
	nc, js, st, err := a.connectDeadLetters(ctx, cmd)
	if err != nil {
		return err
	}
	defer closeConn(nc)
	var chosen []deadLetter
	if seq > 0 {
		d, err := getDeadLetter(ctx, st, seq)
		if err != nil {
			return err
		}
		chosen = append(chosen, d)
	} else {
		want := strings.ToLower(reason)
		if err := scanDeadLetters(ctx, st, since, false, func(d deadLetter) error {
			if want == "" || strings.Contains(strings.ToLower(d.reason()), want) {
				chosen = append(chosen, d)
			}
			return nil
		}); err != nil {
			return err
		}
	}
	if len(chosen) == 0 {
		fmt.Fprintln(a.stderr, "no dead letter matches: nothing replayed")
		return nil
	}
	var kv jetstream.KeyValue
	if f.dry {
		kv, err = js.KeyValue(ctx, RunBucket)
		if errors.Is(err, jetstream.ErrBucketNotFound) {
			kv, err = nil, nil
		}
	} else {
		var runs *Runs
		runs, err = OpenRuns(ctx, js, f.replicas)
		if runs != nil {
			kv = runs.kv
		}
	}
	if err != nil {
		return opErr(err)
	}

	// Publishing is the work: Ctrl-C waits for the dead letter under way.
	pctx := context.WithoutCancel(ctx)
	counts := map[replayOutcome]int{}
	to := map[string]int{}
	for _, d := range chosen {
		if ctx.Err() != nil {
			fmt.Fprintln(a.stderr, "interrupted: the dead letters not listed above were not replayed")
			break
		}
		out, msg := a.replayOne(pctx, js, kv, d, f.dry)
		counts[out]++
		if out == replayedNow || out == replayWould {
			to[d.from()]++
		}
		fmt.Fprintf(a.stdout, "%d\t%s\n", d.Seq, msg)
	}
	var parts []string
	verb := "replayed"
	if f.dry {
		verb = "would replay"
	}
	dests := make([]string, 0, len(to))
	for subj, n := range to {
		dests = append(dests, fmt.Sprintf("%d to %s", n, subj))
	}
	sort.Strings(dests)
	n := counts[replayedNow] + counts[replayWould]
	summary := fmt.Sprintf("%s %d of %d dead letters", verb, n, len(chosen))
	if len(dests) > 0 {
		summary += " (" + strings.Join(dests, ", ") + ")"
	}
	if c := counts[replayedBefore]; c > 0 {
		parts = append(parts, fmt.Sprintf("%d replayed before, not again", c))
	}
	if c := counts[replayRefused]; c > 0 {
		parts = append(parts, fmt.Sprintf("%d refused", c))
	}
	if c := counts[replayFailed]; c > 0 {
		parts = append(parts, fmt.Sprintf("%d could not be published", c))
	}
	if len(parts) > 0 {
		summary += "; " + strings.Join(parts, ", ")
	}
	fmt.Fprintln(a.stderr, summary)
	if counts[replayRefused]+counts[replayFailed] > 0 {
		a.code = ExitNotAll
	}
	if ctx.Err() != nil {
		return fmt.Errorf("%w%w", ErrInterrupted, errSaid)
	}
	return nil
}

// replayOne replays d once, and says what became of it.
func (a *app) replayOne(ctx context.Context, js jetstream.JetStream, kv jetstream.KeyValue, d deadLetter, dry bool) (replayOutcome, string) {
	msg, err := broker.ReplayMsg(d.Seq, d.Header, d.Data)
	if err != nil {
		return replayRefused, "refused: " + strings.TrimPrefix(err.Error(), broker.ErrNotReplayable.Error()+": ")
	}
	mark, err := replayState(ctx, kv, d)
	if err != nil {
		return replayFailed, "not replayed: " + err.Error()
	}
	if mark != nil {
		return replayedBefore, fmt.Sprintf("replayed before (%s, to %s): not again", mark.ReplayedAt.UTC().Format(time.RFC3339), mark.To)
	}
	if dry {
		return replayWould, "would be replayed to " + msg.Subject
	}
	// Claim first, publish second: of two replays at once, one publishes.
	// A publish that fails gives the claim back.
	b, _ := json.Marshal(replayMark{Stored: d.Stored, To: msg.Subject, MsgID: broker.ReplayMsgID(d.Seq), ReplayedAt: time.Now().UTC()})
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := claimReplay(cctx, kv, d, b); errors.Is(err, errReplayedMeanwhile) {
		return replayedBefore, "replayed meanwhile by another esimctl: not again"
	} else if err != nil {
		return replayFailed, "not replayed: cannot record the replay in " + RunBucket + ": " + err.Error()
	}
	ack, err := js.PublishMsg(cctx, msg)
	if err != nil {
		if derr := kv.Delete(context.WithoutCancel(ctx), replayKey(d.Seq)); derr != nil {
			a.log.Warn().Err(derr).Uint64("seq", d.Seq).Msg("the replay failed and its record stays: replay refuses it now")
		}
		return replayFailed, "not replayed: publishing to " + msg.Subject + ": " + err.Error()
	}
	if ack.Duplicate {
		return replayedNow, "replayed to " + msg.Subject + " (the stream already had it: published by an earlier attempt)"
	}
	return replayedNow, fmt.Sprintf("replayed to %s (stream %s, sequence %d)", msg.Subject, ack.Stream, ack.Sequence)
}

var errReplayedMeanwhile = errors.New("replayed meanwhile")

// claimReplay records that d is being replayed, unless another replay did.
func claimReplay(ctx context.Context, kv jetstream.KeyValue, d deadLetter, mark []byte) error {
	_, err := kv.Create(ctx, replayKey(d.Seq), mark)
	if !errors.Is(err, jetstream.ErrKeyExists) {
		return err
	}
	m, err := replayState(ctx, kv, d)
	if err != nil {
		return err
	}
	if m != nil {
		return errReplayedMeanwhile
	}
	// The mark of a dead letter of that number in an earlier stream.
	_, err = kv.Put(ctx, replayKey(d.Seq), mark)
	return err
}
