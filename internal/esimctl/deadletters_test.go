package esimctl_test

import (
	"bytes"
	"context"
	"encoding/json"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/esim-pipeline/thingspace-esim/internal/broker"
	"github.com/esim-pipeline/thingspace-esim/internal/esimctl"
)

// deadLetters reads every dead letter stored, oldest first.
func (s *stack) deadLetters() []*jetstream.RawStreamMsg {
	s.t.Helper()
	ctx := context.Background()
	st, err := s.js.Stream(ctx, broker.DeadLetterStream)
	require.NoError(s.t, err)
	info, err := st.Info(ctx)
	require.NoError(s.t, err)
	var out []*jetstream.RawStreamMsg
	for seq := info.State.FirstSeq; info.State.Msgs > 0 && seq <= info.State.LastSeq; seq++ {
		m, err := st.GetMsg(ctx, seq)
		require.NoError(s.t, err)
		out = append(out, m)
	}
	return out
}

// waitDeadLetters waits until n dead letters are stored and returns them.
func (s *stack) waitDeadLetters(n int) []*jetstream.RawStreamMsg {
	s.t.Helper()
	var got []*jetstream.RawStreamMsg
	require.Eventually(s.t, func() bool { got = s.deadLetters(); return len(got) >= n }, 20*time.Second, 20*time.Millisecond,
		"want %d dead letters", n)
	return got
}

func seqOf(m *jetstream.RawStreamMsg) string { return strconv.FormatUint(m.Sequence, 10) }

// The operator's session: the pipeline dead-letters an undecodable command
// and two unparseable callbacks (one carrying credentials, one broken
// JSON); a command that exhausted its deliveries waits in the dead letters
// too. list counts them per subject and reason, newest first; show prints
// one without its credentials; replay sends the command back to the
// dispatcher, which carries it out, once; an undecodable command replayed
// and dead-lettered again is not replayed a second time.
func TestAnOperatorListsShowsAndReplaysDeadLetters(t *testing.T) {
	s := newStack(t)
	ctx := context.Background()
	_, err := s.js.Publish(ctx, "thingspace.profile.commands.enable", []byte(`{not a command`))
	require.NoError(t, err)
	undecodable := s.waitDeadLetters(1)[0]
	require.Equal(t, broker.DeadLetterCommands, undecodable.Subject)

	// Straight onto the raw subject (the intake would have stripped the
	// credentials): show must mask them all the same.
	_, err = s.js.Publish(ctx, broker.CallbackSubject, []byte(`{"requestId":"req.dl","status":"Success","username":"cb-user-dl","password":"cb-secret-77",`+
		`"deviceIds":[{"kind":"iccid","id":"89148000000000000001"}],"deviceResponse":{"deviceProfileResponse":{"deviceCredential":{"password":"dev-secret-77"}}}}`))
	require.NoError(t, err)
	_, err = s.js.Publish(ctx, broker.CallbackSubject, []byte("{\"password\":\"cb-secret-88\",\"requestId\":\x01 broken"))
	require.NoError(t, err)
	all := s.waitDeadLetters(3)
	withCreds, broken := all[1], all[2] // the fan-out's workers may store them in either order
	if !bytes.Contains(withCreds.Data, []byte("req.dl")) {
		withCreds, broken = broken, withCreds
	}
	require.Equal(t, broker.DeadLetterCallbacks, withCreds.Subject)

	// As the dispatcher leaves a command that exhausted its deliveries.
	exhausted := nats.NewMsg(broker.DeadLetterCommands)
	exhausted.Data = []byte(`{"commandId":"dl-replay-1","accountName":"` + account + `","smsrOid":"` + smsrOid +
		`","devices":[{"deviceIds":[{"kind":"eid","id":"` + eid(31) + `"},{"kind":"iccid","id":"` + iccid(31) + `"}]}]}`)
	exhausted.Header.Set(broker.HeaderDeadletterReason, "delivered 11 times without an outcome (MAX_DELIVER 10)")
	exhausted.Header.Set(broker.HeaderDeadletterSubject, "thingspace.profile.commands.enable")
	exhausted.Header.Set("Trace-Id", "trace-31")
	_, err = s.js.PublishMsg(ctx, exhausted)
	require.NoError(t, err)
	all = s.waitDeadLetters(4)
	exhaustedSeq := seqOf(all[3])

	t.Run("list counts them per subject and reason, newest first", func(t *testing.T) {
		r := s.esimctl(ctx, "deadletters", "list")
		require.Equal(t, esimctl.ExitOK, r.code, r.stderr)
		lines := regexp.MustCompile(`(?m)^deadletter\.\S+.*$`).FindAllString(r.stdout, -1)
		require.Len(t, lines, 4, r.stdout)
		assert.Regexp(t, `^deadletter\.commands\s+thingspace\.profile\.commands\.enable\s+1\s+0\s+\S+Z\s+delivered 11 times.*\s`+exhaustedSeq+`$`, lines[0])
		assert.Regexp(t, `^deadletter\.callbacks\s+thingspace\.profile\.callbacks\.raw\s+1\s+0\s+`, lines[1])
		assert.Regexp(t, `\s`+seqOf(undecodable)+`$`, lines[3], "the oldest last")
		assert.Contains(t, r.stderr, "4 dead letters in 4 groups")

		r = s.esimctl(ctx, "deadletters", "list", "--json", "--since", all[3].Time.Format(time.RFC3339Nano))
		require.Equal(t, esimctl.ExitOK, r.code, r.stderr)
		var groups []esimctl.DeadLetterGroup
		require.NoError(t, json.Unmarshal([]byte(r.stdout), &groups), r.stdout)
		require.Len(t, groups, 1, "--since leaves the older ones out")
		assert.Equal(t, []uint64{all[3].Sequence}, groups[0].Sequences)

		r = s.esimctl(ctx, "deadletters", "list", "--since", "2099-01-01T00:00:00Z")
		require.Equal(t, esimctl.ExitOK, r.code, r.stderr)
		assert.Contains(t, r.stderr, "no dead letters in THINGSPACE_DEADLETTER since 2099-01-01T00:00:00Z")
	})

	t.Run("show prints one without its credentials", func(t *testing.T) {
		for _, m := range []*jetstream.RawStreamMsg{withCreds, broken} {
			r := s.esimctl(ctx, "deadletters", "show", seqOf(m))
			require.Equal(t, esimctl.ExitOK, r.code, r.stderr)
			assert.Contains(t, r.stdout, "dead letter "+seqOf(m)+" on "+broker.DeadLetterCallbacks)
			assert.Contains(t, r.stdout, "from:    "+broker.CallbackSubject)
			assert.Contains(t, r.stdout, "reason:  "+m.Header.Get(broker.HeaderDeadletterReason))
			assert.Contains(t, r.stdout, "not yet: esimctl deadletters replay "+seqOf(m))
			assert.Regexp(t, `"password": ?"\[redacted\]"`, r.stdout)
			for _, secret := range []string{"cb-secret-77", "cb-secret-88", "dev-secret-77", "cb-user-dl"} {
				assert.NotContains(t, r.stdout+r.stderr, secret)
			}
		}
		r := s.esimctl(ctx, "deadletters", "show", seqOf(withCreds))
		assert.Contains(t, r.stdout, "body (", "the body")
		assert.Regexp(t, `(?m)^  "requestId": "req\.dl",$`, r.stdout, "pretty-printed")
		assert.Contains(t, r.stdout, `"deviceCredential": "[redacted]"`)
		r = s.esimctl(ctx, "deadletters", "show", seqOf(broken))
		assert.Contains(t, r.stdout, "not JSON")
		assert.Contains(t, r.stdout, `\x01`, "control bytes escaped")
	})

	t.Run("replay sends the command back once and the dispatcher carries it out", func(t *testing.T) {
		seen := s.commandsSeen()
		r := s.esimctl(ctx, "deadletters", "replay", exhaustedSeq)
		require.Equal(t, esimctl.ExitOK, r.code, r.stderr)
		assert.Contains(t, r.stdout, "replayed to thingspace.profile.commands.enable")
		assert.Contains(t, r.stderr, "replayed 1 of 1 dead letters (1 to thingspace.profile.commands.enable)")
		require.Equal(t, 1, seen())
		require.Eventually(t, func() bool {
			st := s.esimctl(ctx, "status", "--json", iccid(31))
			var ds esimctl.DeviceStatus
			return st.code == esimctl.ExitOK && json.Unmarshal([]byte(st.stdout), &ds) == nil &&
				ds.Latest.CommandID == "dl-replay-1" && ds.Latest.Status == "succeeded"
		}, 20*time.Second, 50*time.Millisecond, "the replayed command is carried out")

		again := s.esimctl(ctx, "deadletters", "replay", exhaustedSeq)
		require.Equal(t, esimctl.ExitOK, again.code, again.stderr)
		assert.Contains(t, again.stdout, "replayed before")
		assert.Contains(t, again.stderr, "replayed 0 of 1 dead letters; 1 replayed before, not again")
		require.Equal(t, 1, seen(), "nothing published the second time")

		r = s.esimctl(ctx, "deadletters", "show", exhaustedSeq)
		assert.Contains(t, r.stdout, "replay:  replayed ")
		assert.Contains(t, r.stdout, "Trace-Id: trace-31")
	})

	t.Run("a replay dead-lettered again is not replayed again", func(t *testing.T) {
		r := s.esimctl(ctx, "deadletters", "replay", seqOf(undecodable))
		require.Equal(t, esimctl.ExitOK, r.code, r.stderr)
		all := s.waitDeadLetters(5)
		again := all[4]
		require.Equal(t, seqOf(undecodable), again.Header.Get(broker.HeaderDeadletterReplayed), "marked as the replay of the first")
		require.Equal(t, undecodable.Data, again.Data)

		seen := s.commandsSeen()
		r = s.esimctl(ctx, "deadletters", "replay", seqOf(again))
		require.Equal(t, esimctl.ExitNotAll, r.code, r.stderr)
		assert.Contains(t, r.stdout, "refused: it is dead letter "+seqOf(undecodable)+" replayed and dead-lettered again")
		assert.Contains(t, r.stderr, "1 refused")
		require.Zero(t, seen())

		list := s.esimctl(ctx, "deadletters", "list")
		assert.Regexp(t, `(?m)^deadletter\.commands\s+\S+\s+2\s+1 \(1 failed again\)\s+`, list.stdout)
	})

	t.Run("replay by reason, dry first", func(t *testing.T) {
		r := s.esimctl(ctx, "deadletters", "replay", "--reason", "CANNOT BE PARSED", "--dry-run")
		require.Equal(t, esimctl.ExitOK, r.code, r.stderr)
		assert.Contains(t, r.stderr, "would replay 2 of 2 dead letters (2 to "+broker.CallbackSubject+")")
		before := len(s.deadLetters())
		r = s.esimctl(ctx, "deadletters", "replay", "--reason", "cannot be parsed")
		require.Equal(t, esimctl.ExitOK, r.code, r.stderr)
		assert.Contains(t, r.stderr, "replayed 2 of 2 dead letters")
		all := s.waitDeadLetters(before + 2)
		for _, m := range all[before:] {
			assert.NotEmpty(t, m.Header.Get(broker.HeaderDeadletterReplayed), "still unparseable: dead-lettered again, marked")
		}
	})

	t.Run("bad usage exits 2 and says why", func(t *testing.T) {
		for _, tt := range []struct {
			args []string
			want string
		}{
			{[]string{"deadletters"}, "want a verb"},
			{[]string{"deadletters", "replay"}, "want a dead letter's sequence, --reason R or --since T"},
			{[]string{"deadletters", "replay", "seventeen"}, `"seventeen" is not a dead letter's sequence`},
			{[]string{"deadletters", "replay", "3", "--reason", "x"}, "not both"},
			{[]string{"deadletters", "show", "999999"}, "no dead letter 999999"},
			{[]string{"deadletters", "show"}, "want the dead letter's sequence"},
			{[]string{"deadletters", "list", "--since", "yesterday"}, `--since "yesterday"`},
		} {
			r := s.esimctl(ctx, tt.args...)
			require.Equal(t, esimctl.ExitUsage, r.code, "%v: %s", tt.args, r.stderr)
			require.Contains(t, r.stderr, tt.want, tt.args)
		}
	})
}
