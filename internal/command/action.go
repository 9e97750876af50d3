package command

import (
	"errors"
	"fmt"
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
)

// Actions lists every action in a stable order.
var Actions = []Action{Enable, Disable, Delete, Deactivate, Suspend}

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
	return "", fmt.Errorf("%w %q (want one of enable, disable, delete, deactivate, suspend)", ErrUnknownAction, s)
}

// ActionFromSubject reads the action of a command subject,
// thingspace.profile.commands.<action>.
func ActionFromSubject(subject string) (Action, error) {
	rest, ok := strings.CutPrefix(subject, SubjectPrefix+".")
	if !ok || rest == "" || strings.Contains(rest, ".") {
		return "", fmt.Errorf("%w: subject %q is not %s.<action> (want one of enable, disable, delete, deactivate, suspend)",
			ErrUnknownAction, subject, SubjectPrefix)
	}
	return ParseAction(rest)
}

// Valid reports whether a is one of [Actions].
func (a Action) Valid() bool {
	switch a {
	case Enable, Disable, Delete, Deactivate, Suspend:
		return true
	}
	return false
}

// String returns the action's name.
func (a Action) String() string { return string(a) }

// Endpoint is the last path segment of the action's ThingSpace endpoint,
// POST /api/m2m/v1/devices/profile/actions/<endpoint>.
func (a Action) Endpoint() string {
	if a == Suspend {
		return "profile_suspend"
	}
	return string(a)
}

// Subject is where commands for a are published: thingspace.profile.commands.<action>.
func (a Action) Subject() string { return SubjectPrefix + "." + string(a) }

// Schema is the name of the action's command schema in package schemas.
func (a Action) Schema() string { return schemas.CommandName(string(a)) }

// RequiredKinds are the identifiers every device of a command needs.
func (a Action) RequiredKinds() []device.Kind {
	if a == Suspend {
		return []device.Kind{device.ICCID}
	}
	return []device.Kind{device.EID, device.ICCID}
}

// Kinds are the identifier kinds the action's ThingSpace endpoint accepts;
// a device naming another kind is rejected rather than sent.
func (a Action) Kinds() []device.Kind {
	switch a {
	case Deactivate:
		return []device.Kind{device.EID, device.ICCID, device.IMEI}
	case Suspend:
		return []device.Kind{device.ICCID}
	}
	return []device.Kind{device.EID, device.ICCID}
}

// Fields are the top-level fields of the action's command body, in the order
// of the API page, commandId last.
func (a Action) Fields() []string {
	switch a {
	case Deactivate:
		return []string{"devices", "accountName", "servicePlan", "etfWaiver", "reasonCode", "commandId"}
	case Suspend:
		return []string{"devices", "accountName", "servicePlan", "commandId"}
	}
	return []string{"devices", "accountName", "smsrOid", "commandId"}
}
