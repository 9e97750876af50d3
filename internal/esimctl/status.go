package esimctl

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/esim-pipeline/thingspace-esim/internal/broker"
	"github.com/esim-pipeline/thingspace-esim/internal/status"
)

// DeviceStatus is `esimctl status --json`: the latest event of the device and
// the latest per action, as the ingest's GET /devices/{id} answers.
type DeviceStatus struct {
	Latest  *status.Event            `json:"latest"`
	Actions map[string]*status.Event `json:"actions"`
}

// lookupTimeout bounds one status look-up.
const lookupTimeout = 30 * time.Second

func (a *app) statusCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status ICCID|EID",
		Short: "Show a device's latest status per action, from the status stream",
		Long: `status reads the device's status events from the stream THINGSPACE_STATUS and shows the
latest of each action. An ICCID finds the events filed under it; an EID every event that
named it, whichever of the eUICC's profiles (ICCIDs) it is filed under, through the EID
index the callback-ingest keeps (bucket ` + broker.EIDBucket + `). Exit 0 when the device has an
event, 1 when it has none (said on stderr).`,
		Example: `  esimctl status 89148000000000000001
  esimctl status 89049032000000000000000000000001
  esimctl status 89148000000000000001 --json | jq .latest.status`,
		Args: exactlyOne("an ICCID or an EID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.status(cmd, strings.TrimSpace(args[0]), asJSON)
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON: {\"latest\": event, \"actions\": {action: event}}")
	return cmd
}

func (a *app) status(cmd *cobra.Command, id string, asJSON bool) error {
	ctx := cmd.Context()
	if id == "" || len(id) > maxIDLength || strings.ContainsAny(id, ".*> \t") {
		return usagef("status: %q is not an ICCID or an EID", id)
	}
	nc, js, err := a.connect(ctx, cmd)
	if err != nil {
		return err
	}
	defer closeConn(nc)
	lctx, cancel := context.WithTimeout(ctx, lookupTimeout)
	defer cancel()
	found, err := broker.LookupDevice(lctx, js, id)
	switch {
	case errors.Is(err, broker.ErrNoStatusStream):
		return opErr(fmt.Errorf("stream %s does not exist: start the dispatcher and the callback-ingest (make dev) first", broker.StatusStream))
	case err != nil && ctx.Err() != nil:
		return ErrInterrupted
	case err != nil:
		return opErr(fmt.Errorf("reading the status of %s: %w", id, err))
	}
	ds := DeviceStatus{Actions: map[string]*status.Event{}}
	var actions []string
	if found != nil {
		for action, m := range found.Actions {
			var ev status.Event
			if err := json.Unmarshal(m.Data, &ev); err != nil {
				return opErr(fmt.Errorf("the %s event of %s at sequence %d of %s is not readable: %w", action, id, m.Sequence, broker.StatusStream, err))
			}
			ds.Actions[action] = &ev
			if m.Sequence == found.Latest.Sequence {
				ds.Latest = &ev
			}
			actions = append(actions, action)
		}
	}
	if ds.Latest == nil {
		a.code = ExitNotAll
		fmt.Fprintf(a.stderr, "esimctl: no status event for device %s (an ICCID or an EID the pipeline has seen in the last 30 days)\n", id)
		if asJSON {
			enc := json.NewEncoder(a.stdout)
			enc.SetIndent("", "  ")
			return enc.Encode(ds)
		}
		return nil
	}
	if asJSON {
		enc := json.NewEncoder(a.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(ds)
	}
	sortActions(actions)
	// Looked up by EID, the events may be filed under several profiles:
	// each row names its ICCID.
	byProfile := false
	for _, ev := range ds.Actions {
		if ev.Device.Key() != id {
			byProfile = true
		}
	}
	tw := tabwriter.NewWriter(a.stdout, 0, 0, 2, ' ', 0)
	if byProfile {
		fmt.Fprintln(tw, "ACTION\tICCID\tSTATUS\tOCCURRED AT\tREQUEST ID\tCOMMAND ID\tREASON")
	} else {
		fmt.Fprintln(tw, "ACTION\tSTATUS\tOCCURRED AT\tREQUEST ID\tCOMMAND ID\tREASON")
	}
	for _, action := range actions {
		ev := ds.Actions[action]
		reason := ""
		if ev.Reason != nil {
			reason = strings.TrimSpace(ev.Reason.Code + " " + ev.Reason.Message)
		}
		if byProfile {
			fmt.Fprintf(tw, "%s\t%s\t", action, dash(ev.Device.ICCID))
		} else {
			fmt.Fprintf(tw, "%s\t", action)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", ev.Status, ev.OccurredAt.UTC().Format(time.RFC3339),
			dash(ev.RequestID), dash(ev.CommandID), reason)
	}
	return tw.Flush()
}

// sortActions puts the pipeline's actions first, in their order, then any
// other action token (unknown, actions of a newer dispatcher) by name.
func sortActions(actions []string) {
	rank := func(a string) int {
		if i := slices.Index(actionNames, a); i >= 0 {
			return i
		}
		return len(actionNames)
	}
	slices.SortFunc(actions, func(x, y string) int {
		if d := rank(x) - rank(y); d != 0 {
			return d
		}
		return strings.Compare(x, y)
	})
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
