package esimctl_test

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/esim-pipeline/thingspace-esim/internal/esimctl"
)

// A CSV runs through the lifecycle actions as through the five: resume
// sends the ICCIDs; device_suspend the EIDs, and each row ends with its
// eUICC's device-level final (the profile events are not rows).
func TestACSVRunsThroughResumeAndDeviceSuspend(t *testing.T) {
	s := newStack(t)
	rows := [][]string{{"iccid", "eid"}}
	for i := range 30 {
		rows = append(rows, []string{iccid(i), eid(i)})
	}
	file := s.writeCSV("devices.csv", rows)
	for _, action := range []string{"resume", "device_suspend"} {
		t.Run(action, func(t *testing.T) {
			out := filepath.Join(s.dir, action+".csv")
			r := s.esimctl(context.Background(), "submit", "--action", action, "--account", account, "--out", out, file)
			require.Equal(t, esimctl.ExitOK, r.code, r.stderr)
			require.Contains(t, r.stderr, "30 devices: 30 succeeded")
			results := readCSV(t, out)
			require.Len(t, results, 31)
			for i, row := range results[1:] {
				require.Equal(t, []string{iccid(i), eid(i)}, row[:2], "row %d is the input's", i+1)
				require.Equal(t, "succeeded", row[3], "row %d: %v", i+1, row)
				require.NotEmpty(t, row[6], "request_id")
			}
			calls := 0
			for _, c := range s.sim.Calls() {
				if c.Action == action && c.Status == 200 {
					calls++
					for _, d := range c.Devices {
						require.Len(t, d, 1, "%s sends one identifier per device: %v", action, d)
					}
				}
			}
			require.Equal(t, 1, calls)
		})
	}
}
