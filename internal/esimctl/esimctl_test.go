package esimctl_test

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/esim-pipeline/thingspace-esim/internal/esimctl"
	"github.com/esim-pipeline/thingspace-esim/internal/simulator"
	"github.com/esim-pipeline/thingspace-esim/internal/testkit"
)

// The operator story: 2,500 SIMs, three with a broken ICCID; the results
// say which did not go through; the same command again sends nothing to
// ThingSpace and gives the same file; watch gives it too; status shows one
// device.
func TestASpreadsheetOfSIMsEndsWithAResultsRowPerSIM(t *testing.T) {
	s := newStack(t)
	const n = 2500
	bad := map[int]string{16: "8914800000ABCDEF0016", 1200: "89148000O0000001200X", 2399: "891480000000000024ZZ"}
	rows := [][]string{{"EID", "Iccid", "note"}}
	for i := range n {
		id := iccid(i)
		if b, ok := bad[i]; ok {
			id = b
		}
		rows = append(rows, []string{eid(i), id, "row " + string(rune('a'+i%26))})
	}
	file := s.writeCSV("devices.csv", rows)
	out1 := filepath.Join(s.dir, "results-1.csv")
	submit := []string{"submit", "--action", "enable", "--account", account, "--smsr-oid", smsrOid, "--progress-every", "200ms"}

	first := s.esimctl(context.Background(), append(submit, "--out", out1, file)...)
	require.Equal(t, esimctl.ExitNotAll, first.code, first.stderr)
	run := first.runID(t)
	assert.Contains(t, first.stderr, "published 3 commands (2500 devices) to thingspace.profile.commands.enable")
	assert.Contains(t, first.stderr, "2497 succeeded, 3 rejected")
	assert.Contains(t, first.stderr, "3 rejected INVALID_IDENTIFIER")

	results := readCSV(t, out1)
	require.Len(t, results, n+1)
	require.Equal(t, esimctl.ResultsHeader, results[0])
	succeeded := 0
	for i, r := range results[1:] {
		require.Equal(t, rows[i+1][1], r[0], "row %d is the input's row %d", i+1, i+1)
		require.Equal(t, rows[i+1][0], r[1])
		require.Empty(t, r[2], "no imei column in the input")
		at, err := time.Parse(time.RFC3339Nano, r[7])
		require.NoError(t, err, "occurred_at of row %d", i+1)
		require.False(t, at.IsZero())
		if _, isBad := bad[i]; isBad {
			require.Equal(t, "rejected", r[3], "row %d", i+1)
			require.Equal(t, "INVALID_IDENTIFIER", r[4])
			require.Contains(t, r[5], "digits only")
			require.Empty(t, r[6], "a device rejected before submission has no requestId")
			continue
		}
		require.Equal(t, "succeeded", r[3], "row %d: %v", i+1, r)
		require.Empty(t, r[4])
		require.NotEmpty(t, r[6], "request_id")
		succeeded++
	}
	require.Equal(t, n-len(bad), succeeded)
	want, err := os.ReadFile(out1)
	require.NoError(t, err)

	t.Run("the same command again sends nothing and gives the same file", func(t *testing.T) {
		calls, stats := len(s.sim.Calls()), s.sim.Stats()
		seen := s.commandsSeen()
		out2 := filepath.Join(s.dir, "results-2.csv")
		again := s.esimctl(context.Background(), append(submit, "--out", out2, file)...)
		require.Equal(t, esimctl.ExitNotAll, again.code, again.stderr)
		require.Equal(t, run, again.runID(t))
		assert.Contains(t, again.stderr, "resuming run "+run)
		assert.Contains(t, again.stderr, "all 3 commands of the run were published before; nothing sent again")
		require.Zero(t, seen(), "no command published again")
		require.Equal(t, calls, len(s.sim.Calls()), "no new ThingSpace call")
		require.Equal(t, stats.ActionCalls, s.sim.Stats().ActionCalls)
		require.Equal(t, stats.DevicesAccept, s.sim.Stats().DevicesAccept)
		got, err := os.ReadFile(out2)
		require.NoError(t, err)
		require.Equal(t, string(want), string(got))
	})

	t.Run("a chunk whose publish was not recorded is published again, once", func(t *testing.T) {
		// As if the first submit had died between publishing chunk 1 and
		// recording it: the resubmission publishes chunk 1 alone, and the
		// stream's duplicate window keeps it from ThingSpace.
		kv, err := s.js.KeyValue(context.Background(), esimctl.RunBucket)
		require.NoError(t, err)
		require.NoError(t, kv.Delete(context.Background(), run+".chunk.1"))
		calls := len(s.sim.Calls())
		seen := s.commandsSeen()
		out := filepath.Join(s.dir, "results-resumed.csv")
		again := s.esimctl(context.Background(), append(submit, "--out", out, file)...)
		require.Equal(t, esimctl.ExitNotAll, again.code, again.stderr)
		require.Contains(t, again.stderr, "published 1 commands (1000 devices) to thingspace.profile.commands.enable; 2 were published before")
		require.Equal(t, 1, seen())
		require.Equal(t, calls, len(s.sim.Calls()), "the duplicate window kept it from ThingSpace")
		got, err := os.ReadFile(out)
		require.NoError(t, err)
		require.Equal(t, string(want), string(got))
		_, err = kv.Get(context.Background(), run+".chunk.1")
		require.NoError(t, err, "recorded now")
	})

	t.Run("watch gives the same file", func(t *testing.T) {
		out3 := filepath.Join(s.dir, "results-3.csv")
		w := s.esimctl(context.Background(), "watch", run, "--out", out3)
		require.Equal(t, esimctl.ExitNotAll, w.code, w.stderr)
		require.Equal(t, run, w.runID(t))
		got, err := os.ReadFile(out3)
		require.NoError(t, err)
		require.Equal(t, string(want), string(got))
	})

	t.Run("the default results path names the run", func(t *testing.T) {
		wd, err := os.Getwd()
		require.NoError(t, err)
		require.NoError(t, os.Chdir(s.dir))
		t.Cleanup(func() { _ = os.Chdir(wd) })
		w := s.esimctl(context.Background(), "watch", run)
		require.Equal(t, esimctl.ExitNotAll, w.code, w.stderr)
		got, err := os.ReadFile(filepath.Join(s.dir, "results-"+run+".csv"))
		require.NoError(t, err)
		require.Equal(t, string(want), string(got))
	})

	t.Run("status shows a device's latest status per action", func(t *testing.T) {
		st := s.esimctl(context.Background(), "status", iccid(3))
		require.Equal(t, esimctl.ExitOK, st.code, st.stderr)
		require.Regexp(t, `(?m)^enable\s+succeeded\s+\S+T\S+Z\s+\S+\s+esimctl-`+run+`-0000\s*$`, st.stdout)

		js := s.esimctl(context.Background(), "status", "--json", bad[1200])
		require.Equal(t, esimctl.ExitOK, js.code, js.stderr)
		var ds esimctl.DeviceStatus
		require.NoError(t, json.Unmarshal([]byte(js.stdout), &ds))
		require.NotNil(t, ds.Latest)
		require.Equal(t, "rejected", string(ds.Latest.Status))
		require.Equal(t, "esimctl-"+run+"-0001", ds.Latest.CommandID, "row 1201 is in the second chunk")
		require.Contains(t, ds.Actions, "enable")

		none := s.esimctl(context.Background(), "status", iccid(999999))
		require.Equal(t, esimctl.ExitNotAll, none.code)
		require.Contains(t, none.stderr, "no status event for device "+iccid(999999))
	})
}

// Ctrl-C stops following at once; the run goes on, and watch finishes it.
func TestInterruptingStopsFollowingNotTheWork(t *testing.T) {
	s := newStack(t)
	// Callbacks come late enough that the run is surely mid-way at the cancel.
	require.NoError(t, s.sim.SetFaults(simulator.Faults{RatePerMinute: -1, CallbackDelay: 2 * time.Second}))
	rows := [][]string{{"iccid", "eid"}}
	for i := range 300 {
		rows = append(rows, []string{iccid(i), eid(i)})
	}
	file := s.writeCSV("devices.csv", rows)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stderr, wait := s.start(ctx, "submit", "--action", "disable", "--account", account, "--smsr-oid", smsrOid,
		"--progress-every", "20ms", "--out", filepath.Join(s.dir, "interrupted.csv"), file)
	require.Eventually(t, func() bool { return strings.Contains(stderr.String(), "accepted") },
		30*time.Second, 10*time.Millisecond, "progress shows accepted devices")

	cancel()
	stopped := time.Now()
	r := wait(2 * time.Second)
	require.Less(t, time.Since(stopped), 2*time.Second)
	require.Equal(t, esimctl.ExitInterrupted, r.code, r.stderr)
	run := r.runID(t)
	require.Contains(t, r.stderr, "stopped following run "+run)
	require.Contains(t, r.stderr, "the work goes on: esimctl watch "+run)
	require.NoFileExists(t, filepath.Join(s.dir, "interrupted.csv"), "no results before every device is final")
	require.Contains(t, r.stderr, "published 1 commands (300 devices)")
	require.Regexp(t, `(?m)^run `+run+`: \d+/300 final \(.*accepted.*\) · \d+ devices/s · (about \S+ left|time left unknown)$`, r.stderr,
		"plain progress lines when stderr is not a terminal")

	out := filepath.Join(s.dir, "watched.csv")
	w := s.esimctl(context.Background(), "watch", run, "--out", out, "--progress-every", "100ms")
	require.Equal(t, esimctl.ExitOK, w.code, w.stderr)
	require.Contains(t, w.stderr, "300 devices: 300 succeeded")
	results := readCSV(t, out)
	require.Len(t, results, 301)
	for i, row := range results[1:] {
		require.Equal(t, iccid(i), row[0])
		require.Equal(t, "succeeded", row[3])
	}
}

// --no-wait publishes, prints the run id and exits 0; a later watch follows.
func TestNoWaitPublishesAndLeaves(t *testing.T) {
	s := newStack(t)
	file := s.writeCSV("suspend.csv", [][]string{{"ICCID", "EID"}, {iccid(1), eid(1)}, {iccid(2), eid(2)}, {iccid(1), eid(1)}})
	r := s.esimctl(context.Background(), "submit", "--action", "suspend", "--account", account, "--no-wait", file)
	require.Equal(t, esimctl.ExitOK, r.code, r.stderr)
	run := r.runID(t)
	require.Contains(t, r.stderr, "note: suspend takes no eid")
	require.Contains(t, r.stderr, "note: 1 rows name a device an earlier row names")
	require.Contains(t, r.stderr, "esimctl watch "+run)

	out := filepath.Join(s.dir, "suspend-results.csv")
	w := s.esimctl(context.Background(), "watch", run, "--out", out)
	require.Equal(t, esimctl.ExitOK, w.code, w.stderr)
	results := readCSV(t, out)
	require.Len(t, results, 4, "one row per input row, the repeated one too")
	for i, want := range []string{iccid(1), iccid(2), iccid(1)} {
		require.Equal(t, want, results[i+1][0])
		require.Equal(t, "succeeded", results[i+1][3])
	}
	require.Equal(t, results[1], results[3], "a repeated row reports its device")
}

// Bad usage and bad files exit 2 with a clear message, before anything is
// published or recorded.
func TestBadUsageAndBadFilesExit2AndPublishNothing(t *testing.T) {
	s := natsOnly(t)
	good := s.writeCSV("good.csv", [][]string{{"iccid", "eid"}, {iccid(1), eid(1)}})
	noID := s.writeCSV("noid.csv", [][]string{{"msisdn", "name"}, {"12025550100", "truck 7"}})
	onlyICCID := s.writeCSV("iccid.csv", [][]string{{"iccid"}, {iccid(1)}})
	conflict := s.writeCSV("conflict.csv", [][]string{{"iccid", "eid"}, {iccid(1), eid(1)}, {iccid(2), eid(2)}, {iccid(1), eid(9)}})
	ragged := filepath.Join(s.dir, "ragged.csv")
	require.NoError(t, os.WriteFile(ragged, []byte("iccid,eid\n"+iccid(1)+","+eid(1)+"\n\"unterminated,"+eid(2)+"\n"), 0o644))
	enable := []string{"submit", "--action", "enable", "--account", account, "--smsr-oid", smsrOid}

	tests := []struct {
		name string
		args []string
		want string
	}{
		{"a CSV with no id column", append(enable, noID), `noid.csv: line 1: the header names no iccid, eid or imei column (it has "msisdn", "name")`},
		{"a missing file", append(enable, filepath.Join(s.dir, "nope.csv")), "nope.csv: cannot read the devices file: no such file"},
		{"a missing --action", []string{"submit", "--account", account, good}, "--action is required: one of enable, disable, delete, deactivate, suspend"},
		{"an unknown action", []string{"submit", "--action", "activate", "--account", account, good}, `--action "activate" is not an action`},
		{"a missing --account", []string{"submit", "--action", "suspend", good}, "--account is required"},
		{"enable without --smsr-oid", []string{"submit", "--action", "enable", "--account", account, good}, "enable needs --smsr-oid"},
		{"an option the action does not take", []string{"submit", "--action", "suspend", "--account", account, "--smsr-oid", smsrOid, good}, "suspend does not take --smsr-oid"},
		{"a malformed smsrOid", []string{"submit", "--action", "enable", "--account", account, "--smsr-oid", "not-an-oid", good}, `smsrOid "not-an-oid" is not a dotted object identifier`},
		{"a reason code of 3 characters", []string{"submit", "--action", "deactivate", "--account", account, "--reason-code", "FFF", good}, `--reason-code "FFF" must be 2 characters`},
		{"a column the action needs is missing", append(enable, onlyICCID), "iccid.csv: line 1: enable needs eid and iccid for every device; the header has no eid column"},
		{"one device named two ways", append(enable, conflict), "conflict.csv: line 4: names " + iccid(1) + ", which line 2 names with other identifiers"},
		{"broken CSV", append(enable, ragged), "ragged.csv: line 3: not valid CSV"},
		{"no file", enable, "submit: want the devices file (a CSV)"},
		{"two files", append(enable, good, good), "submit: want one argument"},
		{"an unknown flag", append(enable, "--colour", good), "unknown flag: --colour"},
		{"watch without a run id", []string{"watch"}, "watch: want the run id that submit printed"},
		{"an unknown verb", []string{"resubmit"}, `unknown command "resubmit"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := s.esimctl(context.Background(), tt.args...)
			require.Equal(t, esimctl.ExitUsage, r.code, r.stderr)
			require.Contains(t, r.stderr, tt.want)
			require.NotRegexp(t, `(?m)^run `, r.stderr, "no run id for a run that does not start")
		})
	}
	require.Zero(t, s.commandsStored(), "nothing published")
	_, err := s.js.KeyValue(context.Background(), esimctl.RunBucket)
	require.Error(t, err, "no run recorded")

	t.Run("watch of an unknown run", func(t *testing.T) {
		r := s.esimctl(context.Background(), "watch", "0123456789abcdef")
		require.Equal(t, esimctl.ExitUsage, r.code, r.stderr)
		require.Contains(t, r.stderr, "no run 0123456789abcdef")
	})
}

// Without NATS the CLI says where it looked and exits 1, after naming the run.
func TestNoNATSIsAClearError(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "d.csv")
	require.NoError(t, os.WriteFile(file, []byte("iccid\n"+iccid(1)+"\n"), 0o644))
	env := func(k string) string {
		if k == "NATS_URL" {
			return "nats://127.0.0.1:1"
		}
		return ""
	}
	var out, errOut testkit.SyncBuffer
	code := esimctl.Run(context.Background(), []string{"submit", "--action", "suspend", "--account", account, "--connect-timeout", "300ms", file}, env, &out, &errOut)
	require.Equal(t, esimctl.ExitNotAll, code, errOut.String())
	require.Contains(t, errOut.String(), "cannot reach NATS at nats://127.0.0.1:1 within 300ms")
}

func TestHelpListsTheVerbsAndFlags(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want []string
	}{
		{[]string{"--help"}, []string{"submit", "watch", "status", "completion", "--nats-url", "--context", "Exit codes"}},
		{[]string{"submit", "--help"}, []string{"--action", "--account", "--smsr-oid", "--service-plan", "--etf-waiver", "--reason-code", "--out", "--no-wait"}},
		{[]string{"watch", "--help"}, []string{"RUN_ID", "--out"}},
		{[]string{"status", "--help"}, []string{"ICCID|EID", "--json"}},
		{[]string{"completion", "bash"}, []string{"bash completion"}},
	} {
		var out, errOut testkit.SyncBuffer
		code := esimctl.Run(context.Background(), tt.args, func(string) string { return "" }, &out, &errOut)
		require.Equal(t, esimctl.ExitOK, code, errOut.String())
		for _, w := range tt.want {
			require.Contains(t, out.String(), w, "%v", tt.args)
		}
	}
}

// A NATS CLI context names the server when NATS_URL does not.
func TestANATSCLIContextNamesTheServer(t *testing.T) {
	s := natsOnly(t)
	home := t.TempDir()
	dir := filepath.Join(home, ".config", "nats", "context")
	require.NoError(t, os.MkdirAll(dir, 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "dev.json"), []byte(`{"description":"dev","url":"`+s.ns.URL()+`"}`), 0o644))
	env := map[string]string{"HOME": home, "NATS_CONTEXT": "dev"}
	run := func(env map[string]string, args ...string) result {
		var out, errOut testkit.SyncBuffer
		code := esimctl.Run(context.Background(), args, func(k string) string { return env[k] }, &out, &errOut)
		return result{code: code, stdout: out.String(), stderr: errOut.String()}
	}
	r := run(env, "status", iccid(1))
	require.Equal(t, esimctl.ExitNotAll, r.code, r.stderr)
	require.Contains(t, r.stderr, "no status event for device "+iccid(1), "connected through the context")

	r = run(map[string]string{"HOME": home}, "status", "--context", "dev", "--connect-timeout", "5s", iccid(1))
	require.Contains(t, r.stderr, "no status event for device", "--context works too")

	r = run(map[string]string{"HOME": home, "NATS_CONTEXT": "dev", "NATS_URL": "nats://127.0.0.1:1"}, "status", "--connect-timeout", "300ms", iccid(1))
	require.Equal(t, esimctl.ExitNotAll, r.code)
	require.Contains(t, r.stderr, "cannot reach NATS at nats://127.0.0.1:1", "NATS_URL overrides the context")

	r = run(map[string]string{"HOME": home}, "status", "--context", "missing", iccid(1))
	require.Equal(t, esimctl.ExitUsage, r.code)
	require.Contains(t, r.stderr, `NATS context "missing"`)
}
