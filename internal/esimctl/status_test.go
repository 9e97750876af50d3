package esimctl_test

import (
	"context"
	"encoding/json"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/esim-pipeline/thingspace-esim/internal/esimctl"
	"github.com/esim-pipeline/thingspace-esim/internal/testkit"
)

// An operator thinks in EIDs: one eUICC, two profiles, one enabled and the
// other disabled through the real pipeline; `esimctl status EID` shows the
// latest of each action, each row naming its profile's ICCID, and --json
// answers what GET /devices/{EID} does.
func TestStatusOfAnEIDShowsTheLatestOfEachActionOnAnyOfItsProfiles(t *testing.T) {
	s := newStack(t)
	const e = "89049032000000000000000000004242"
	a, b := iccid(4241), iccid(4242)
	for _, run := range []struct{ action, iccid string }{{"enable", a}, {"disable", b}} {
		file := s.writeCSV(run.action+".csv", [][]string{{"eid", "iccid"}, {e, run.iccid}})
		r := s.esimctl(context.Background(), "submit", "--action", run.action, "--account", account, "--smsr-oid", smsrOid,
			"--out", filepath.Join(s.dir, run.action+"-results.csv"), file)
		require.Equal(t, esimctl.ExitOK, r.code, r.stderr)
	}

	// The index follows the status stream: it may be a moment behind.
	var table esimctl.DeviceStatus
	require.Eventually(t, func() bool {
		r := s.esimctl(context.Background(), "status", "--json", e)
		if r.code != esimctl.ExitOK {
			return false
		}
		table = esimctl.DeviceStatus{}
		require.NoError(t, json.Unmarshal([]byte(r.stdout), &table), r.stdout)
		return len(table.Actions) == 2 && table.Actions["disable"].Status == "succeeded"
	}, 20*time.Second, 50*time.Millisecond, "status --json %s finds both profiles' events", e)
	assert.Equal(t, a, table.Actions["enable"].Device.ICCID)
	assert.Equal(t, "succeeded", string(table.Actions["enable"].Status))
	assert.Equal(t, b, table.Actions["disable"].Device.ICCID)
	require.NotNil(t, table.Latest)
	assert.Equal(t, table.Actions["disable"].EventID, table.Latest.EventID, "the disable came last")

	r := s.esimctl(context.Background(), "status", e)
	require.Equal(t, esimctl.ExitOK, r.code, r.stderr)
	assert.Regexp(t, `(?m)^ACTION\s+ICCID\s+STATUS\s+`, r.stdout)
	assert.Regexp(t, `(?m)^enable\s+`+a+`\s+succeeded\s+\S+T\S+Z\s+\S+\s+esimctl-\S+-0000\s*$`, r.stdout)
	assert.Regexp(t, `(?m)^disable\s+`+b+`\s+succeeded\s+`, r.stdout)

	r = s.esimctl(context.Background(), "status", a)
	require.Equal(t, esimctl.ExitOK, r.code, r.stderr)
	assert.Regexp(t, `(?m)^ACTION\s+STATUS\s+`, r.stdout, "an ICCID's events are all its own: no ICCID column")
	assert.NotContains(t, r.stdout, "disable", "the disable was B's")
}

// Whatever makes esimctl exit with another code than 0, stderr says why.
func TestEveryNonZeroExitSaysWhyOnStderr(t *testing.T) {
	s := natsOnly(t)
	canceled, cancel := context.WithCancel(context.Background())
	cancel()
	tests := []struct {
		name string
		ctx  context.Context
		env  map[string]string
		args []string
		code int
		want string
	}{
		{"a device with no event, as JSON", nil, nil, []string{"status", "--json", eid(77)}, esimctl.ExitNotAll, "no status event for device " + eid(77)},
		{"a device with no event, as a table", nil, nil, []string{"status", iccid(77)}, esimctl.ExitNotAll, "no status event for device " + iccid(77)},
		{"NATS out of reach", nil, map[string]string{"NATS_URL": "nats://127.0.0.1:1"}, []string{"status", "--connect-timeout", "200ms", iccid(1)}, esimctl.ExitNotAll, "cannot reach NATS"},
		{"interrupted before it began", canceled, nil, []string{"status", iccid(1)}, esimctl.ExitInterrupted, "interrupted"},
		{"an unknown run", nil, nil, []string{"watch", "0123456789abcdef"}, esimctl.ExitUsage, "no run 0123456789abcdef"},
		{"a bad identifier", nil, nil, []string{"status", "8914.*"}, esimctl.ExitUsage, "is not an ICCID or an EID"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := tt.ctx
			if ctx == nil {
				ctx = context.Background()
			}
			env := func(k string) string {
				if v, ok := tt.env[k]; ok {
					return v
				}
				return s.env(k)
			}
			var out, errOut testkit.SyncBuffer
			code := esimctl.Run(ctx, tt.args, env, &out, &errOut)
			require.Equal(t, tt.code, code, "stdout %q, stderr %q", out.String(), errOut.String())
			require.Contains(t, errOut.String(), tt.want)
		})
	}
}
