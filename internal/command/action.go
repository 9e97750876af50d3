package command

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/esim-pipeline/thingspace-esim/internal/device"
	"github.com/esim-pipeline/thingspace-esim/schemas"
)

// Action is a profile action, named as on NATS.
type Action string

// The actions in scope.
const (
	Enable     Action = "enable"
	Disable    Action = "disable"
	Delete     Action = "delete"
	Deactivate Action = "deactivate"
	Suspend    Action = "suspend"
	// The rest of the lifecycle, which undoes the five.
	Resume          Action = "resume"
	DeviceSuspend   Action = "device_suspend"
	DeviceResume    Action = "device_resume"
	DownloadEnable  Action = "download_enable"
	DownloadDisable Action = "download_disable"
)

// Callbacks says how ThingSpace answers an action, per device of a call.
type Callbacks uint8

const (
	// PerProfile: one callback per device named (a profile, an ICCID).
	PerProfile Callbacks = iota
	// PerProfileThenDevice: one callback per profile on the eUICC, then one
	// final callback for the device (the EID) itself.
	PerProfileThenDevice
)

// Spec is everything the pipeline knows of one action: one row of the
// action table, which the decoder, the ThingSpace client, the simulator,
// the dispatcher's per-action settings, esimctl and the schemas' tests all
// read. Adding an action is a row here, its command schema and example,
// and its tests.
type Spec struct {
	Action Action
	// Endpoint is the last path segment of its ThingSpace endpoint,
	// POST /api/m2m/v1/devices/profile/actions/<endpoint>.
	Endpoint string
	// Required are the identifier kinds every device needs; Kinds the
	// ones it may name (a device naming another is rejected, not sent).
	Required, Kinds []device.Kind
	// Fields are the top-level fields of the command body, in the order of
	// the API page, commandId last. Those among smsrOid, servicePlan,
	// etfWaiver and reasonCode are call options: commands differing in
	// them never share a call.
	Fields []string
	// Mandatory are the fields the body must have besides devices and
	// accountName.
	Mandatory []string
	// Global marks the Global eSIM endpoints, whose error bodies carry the
	// HTTP status as errorCode.
	Global bool
	// Callbacks is how ThingSpace answers each device.
	Callbacks Callbacks
}

var (
	eidICCID     = []device.Kind{device.EID, device.ICCID}
	eidICCIDIMEI = []device.Kind{device.EID, device.ICCID, device.IMEI}
	iccidOnly    = []device.Kind{device.ICCID}
	eidOnly      = []device.Kind{device.EID}
)

// table is the action table, in a stable order.
var table = []Spec{
	{Action: Enable, Endpoint: "enable", Required: eidICCID, Kinds: eidICCID,
		Fields: []string{"devices", "accountName", "smsrOid", "commandId"}, Mandatory: []string{"smsrOid"}},
	{Action: Disable, Endpoint: "disable", Required: eidICCID, Kinds: eidICCID,
		Fields: []string{"devices", "accountName", "smsrOid", "commandId"}, Mandatory: []string{"smsrOid"}},
	{Action: Delete, Endpoint: "delete", Required: eidICCID, Kinds: eidICCID,
		Fields: []string{"devices", "accountName", "smsrOid", "commandId"}, Mandatory: []string{"smsrOid"}},
	{Action: Deactivate, Endpoint: "deactivate", Required: eidICCID, Kinds: eidICCIDIMEI, Global: true,
		Fields: []string{"devices", "accountName", "servicePlan", "etfWaiver", "reasonCode", "commandId"}},
	{Action: Suspend, Endpoint: "profile_suspend", Required: iccidOnly, Kinds: iccidOnly, Global: true,
		Fields: []string{"devices", "accountName", "servicePlan", "commandId"}},
	{Action: Resume, Endpoint: "profile_resume", Required: iccidOnly, Kinds: iccidOnly, Global: true,
		Fields: []string{"devices", "accountName", "servicePlan", "commandId"}},
	{Action: DeviceSuspend, Endpoint: "device_suspend", Required: eidOnly, Kinds: eidOnly, Global: true,
		Fields: []string{"devices", "accountName", "commandId"}, Callbacks: PerProfileThenDevice},
	{Action: DeviceResume, Endpoint: "device_resume", Required: eidOnly, Kinds: eidOnly, Global: true,
		Fields: []string{"devices", "accountName", "commandId"}, Callbacks: PerProfileThenDevice},
	{Action: DownloadEnable, Endpoint: "download_enable", Required: eidICCID, Kinds: eidICCID,
		Fields: []string{"devices", "accountName", "smsrOid", "commandId"}, Mandatory: []string{"smsrOid"}},
	{Action: DownloadDisable, Endpoint: "download_disable", Required: eidICCID, Kinds: eidICCID,
		Fields: []string{"devices", "accountName", "smsrOid", "commandId"}, Mandatory: []string{"smsrOid"}},
}

// Actions lists every action in a stable order.
var Actions = func() []Action {
	out := make([]Action, len(table))
	for i, sp := range table {
		out[i] = sp.Action
	}
	return out
}()

// Names lists every action's name, as Actions does.
func Names() []string {
	out := make([]string, len(Actions))
	for i, a := range Actions {
		out[i] = string(a)
	}
	return out
}

// OneOf is the list of actions for an error or a help text:
// "enable, disable, delete, deactivate, suspend".
func OneOf() string { return strings.Join(Names(), ", ") }

// Lookup returns the row of action a.
func Lookup(a Action) (Spec, bool) {
	for _, sp := range table {
		if sp.Action == a {
			return sp, true
		}
	}
	return Spec{}, false
}

// ForEndpoint returns the row whose endpoint is the path segment seg
// ("profile_suspend" is suspend).
func ForEndpoint(seg string) (Spec, bool) {
	for _, sp := range table {
		if sp.Endpoint == seg {
			return sp, true
		}
	}
	return Spec{}, false
}

// ErrUnknownAction reports an action outside [Actions].
var ErrUnknownAction = errors.New("unknown action")

// SubjectPrefix is the root of every command subject.
const SubjectPrefix = "thingspace.profile.commands"

// SubjectWildcard matches every command subject.
const SubjectWildcard = SubjectPrefix + ".>"

// ParseAction reads an action in any case ("Enable", "SUSPEND").
func ParseAction(s string) (Action, error) {
	a := Action(strings.ToLower(strings.TrimSpace(s)))
	if a.Valid() {
		return a, nil
	}
	return "", fmt.Errorf("%w %q (want one of %s)", ErrUnknownAction, s, OneOf())
}

// ActionFromSubject reads the action of a command subject,
// thingspace.profile.commands.<action>.
func ActionFromSubject(subject string) (Action, error) {
	rest, ok := strings.CutPrefix(subject, SubjectPrefix+".")
	if !ok || rest == "" || strings.Contains(rest, ".") {
		return "", fmt.Errorf("%w: subject %q is not %s.<action> (want one of %s)",
			ErrUnknownAction, subject, SubjectPrefix, OneOf())
	}
	return ParseAction(rest)
}

// Valid reports whether a is one of [Actions].
func (a Action) Valid() bool {
	_, ok := Lookup(a)
	return ok
}

// String returns the action's name.
func (a Action) String() string { return string(a) }

// Spec is a's row of the table (the zero Spec for an unknown action).
func (a Action) Spec() Spec {
	sp, _ := Lookup(a)
	return sp
}

// Endpoint is the last path segment of the action's ThingSpace endpoint,
// POST /api/m2m/v1/devices/profile/actions/<endpoint>.
func (a Action) Endpoint() string { return a.Spec().Endpoint }

// Subject is where commands for a are published: thingspace.profile.commands.<action>.
func (a Action) Subject() string { return SubjectPrefix + "." + string(a) }

// Schema is the name of the action's command schema in package schemas.
func (a Action) Schema() string { return schemas.CommandName(string(a)) }

// RequiredKinds are the identifiers every device of a command needs.
func (a Action) RequiredKinds() []device.Kind { return a.Spec().Required }

// Kinds are the identifier kinds the action's ThingSpace endpoint accepts;
// a device naming another kind is rejected rather than sent.
func (a Action) Kinds() []device.Kind { return a.Spec().Kinds }

// Fields are the top-level fields of the action's command body, in the order
// of the API page, commandId last.
func (a Action) Fields() []string { return a.Spec().Fields }

// Taking lists the actions whose body has field, as an help text's
// "enable, disable, delete".
func Taking(field string) string {
	var out []string
	for _, sp := range table {
		if slices.Contains(sp.Fields, field) {
			out = append(out, string(sp.Action))
		}
	}
	return strings.Join(out, ", ")
}
