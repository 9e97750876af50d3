package esimctl

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"

	"github.com/esim-pipeline/thingspace-esim/internal/broker"
	"github.com/esim-pipeline/thingspace-esim/internal/status"
)

// statusActions are the subjects' action tokens looked up for a device: the
// actions, and "unknown" where the ingest files callbacks naming none.
var statusActions = append(append([]string{}, actionNames...), "unknown")

// DeviceStatus is `esimctl status --json`: the latest event of the device and
// the latest per action, as the ingest's GET /devices/{id} answers.
type DeviceStatus struct {
	Latest  *status.Event            `json:"latest"`
	Actions map[string]*status.Event `json:"actions"`
}

func (a *app) statusCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status ICCID|EID",
		Short: "Show a device's latest status per action, from the status stream",
		Long: `status reads the last status event of each action for the device from the stream
THINGSPACE_STATUS. Events are filed under the ICCID, or the EID where no ICCID is known:
look a device up by its ICCID when it has one. Exit 0 when the device has an event, 1 when
it has none.`,
		Example: `  esimctl status 89148000000000000001
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
	st, err := js.Stream(ctx, broker.StatusStream)
	if err != nil {
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			return opErr(fmt.Errorf("stream %s does not exist: start the dispatcher and the callback-ingest (make dev) first", broker.StatusStream))
		}
		return opErr(fmt.Errorf("stream %s: %w", broker.StatusStream, err))
	}
	ds := DeviceStatus{Actions: map[string]*status.Event{}}
	var latest uint64
	for _, action := range statusActions {
		m, err := st.GetLastMsgForSubject(ctx, status.SubjectPrefix+"."+action+"."+status.Token(id))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			return opErr(fmt.Errorf("reading %s: %w", broker.StatusStream, err))
		}
		var ev status.Event
		if err := json.Unmarshal(m.Data, &ev); err != nil {
			return opErr(fmt.Errorf("the %s event of %s at sequence %d is not readable: %w", action, id, m.Sequence, err))
		}
		ds.Actions[action] = &ev
		if m.Sequence > latest {
			latest, ds.Latest = m.Sequence, &ev
		}
	}
	if asJSON {
		enc := json.NewEncoder(a.stdout)
		enc.SetIndent("", "  ")
		if ds.Latest == nil {
			a.code = ExitNotAll
			return enc.Encode(ds)
		}
		return enc.Encode(ds)
	}
	if ds.Latest == nil {
		fmt.Fprintf(a.stderr, "no status event for device %s (look a device up by its ICCID when it has one)\n", id)
		a.code = ExitNotAll
		return nil
	}
	tw := tabwriter.NewWriter(a.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ACTION\tSTATUS\tOCCURRED AT\tREQUEST ID\tCOMMAND ID\tREASON")
	for _, action := range statusActions {
		ev := ds.Actions[action]
		if ev == nil {
			continue
		}
		reason := ""
		if ev.Reason != nil {
			reason = strings.TrimSpace(ev.Reason.Code + " " + ev.Reason.Message)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", action, ev.Status, ev.OccurredAt.UTC().Format(time.RFC3339),
			dash(ev.RequestID), dash(ev.CommandID), reason)
	}
	return tw.Flush()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
