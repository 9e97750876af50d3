package command

import (
	"errors"
	"strconv"
	"strings"

	"github.com/esim-pipeline/thingspace-esim/internal/device"
	"github.com/esim-pipeline/thingspace-esim/internal/status"
)

// MaxDevices is the most devices one command (and one ThingSpace call) may name.
const MaxDevices = 10000

// Problem codes, the reason code of a device's rejected event.
const (
	// CodeInvalidCommand: the command as a whole is invalid (a required field
	// missing, a malformed option, too many devices); every device carries it.
	CodeInvalidCommand = "INVALID_COMMAND"
	// CodeInvalidDevice: a device entry is malformed (not an object, an
	// unknown field, deviceIds not an array).
	CodeInvalidDevice = "INVALID_DEVICE"
	// CodeInvalidIdentifier: an identifier is malformed: an unknown or
	// unaccepted kind, a value that breaks its kind's format, two values of
	// one kind.
	CodeInvalidIdentifier = "INVALID_IDENTIFIER"
	// CodeMissingIdentifier: the device lacks an identifier the action needs.
	CodeMissingIdentifier = "MISSING_IDENTIFIER"
	// CodeDuplicateDevice: the device already appears earlier in the command.
	CodeDuplicateDevice = "DUPLICATE_DEVICE"
)

// ErrUndecodable reports a command body from which no device can be read:
// it belongs on the dead-letter subject, with the error as the reason.
var ErrUndecodable = errors.New("undecodable command")

// ErrInvalid is what [Command].Err wraps: the command is refused as a whole.
var ErrInvalid = errors.New("invalid command")

// Options are the call options that must be equal for commands to share one
// ThingSpace call. Fields an action does not take stay zero.
type Options struct {
	SmsrOid     string // enable, disable, delete (required)
	ServicePlan string // deactivate, suspend
	EtfWaiver   *bool  // deactivate
	ReasonCode  string // deactivate, 2 characters
}

// Key is a canonical string of o: equal options, equal keys. Its text is
// part of esimctl's run ids, so it never changes:
// smsrOid="…";servicePlan="…";etfWaiver=unset|true|false;reasonCode="…".
func (o Options) Key() string {
	b := make([]byte, 0, 64+len(o.SmsrOid)+len(o.ServicePlan)+len(o.ReasonCode))
	b = strconv.AppendQuote(append(b, "smsrOid="...), o.SmsrOid)
	b = strconv.AppendQuote(append(b, ";servicePlan="...), o.ServicePlan)
	b = append(b, ";etfWaiver="...)
	if o.EtfWaiver == nil {
		b = append(b, "unset"...)
	} else {
		b = strconv.AppendBool(b, *o.EtfWaiver)
	}
	b = strconv.AppendQuote(append(b, ";reasonCode="...), o.ReasonCode)
	return string(b)
}

// Device is a valid device of a command.
type Device struct {
	// Index is the device's position in the command's devices array.
	Index int
	// IDs are its identifiers, each checked by device.Parse.
	IDs device.Set
}

// Problem is a device that must be rejected.
type Problem struct {
	// Index is the device's position in the command's devices array.
	Index int
	// Device holds the identifiers that could be read, as sent (trimmed),
	// valid or not, so the rejection can be matched to the input; it may be
	// empty.
	Device device.Set
	// Code is one of the Code* constants.
	Code string
	// Message says what is wrong, naming the field (devices[3].deviceIds[1].id).
	Message string
}

// Reason is the problem as a status event's reason.
func (p Problem) Reason() status.Reason { return status.Reason{Code: p.Code, Message: p.Message} }

// Error is why a command is refused as a whole.
type Error struct {
	Code    string // CodeInvalidCommand
	Message string // e.g. "accountName is required"
}

func (e *Error) Error() string { return ErrInvalid.Error() + ": " + e.Message }

// Is makes errors.Is(err, ErrInvalid) true.
func (e *Error) Is(target error) bool { return target == ErrInvalid }

// Command is one decoded command message.
type Command struct {
	// ID is the body's commandId, "" when it has none; see [CommandID].
	ID          string
	Action      Action
	AccountName string
	Options     Options
	// Devices are the valid devices, in command order.
	Devices []Device
	// Problems are the devices to reject, in command order. Every device of
	// the command is in exactly one of Devices and Problems.
	Problems []Problem
	// Err, when not nil, is why the command is refused as a whole (an
	// *Error wrapping ErrInvalid); then Devices is empty and every device is
	// in Problems with Code CodeInvalidCommand and Err's message (followed by
	// the device's own problem, if it has one).
	Err error
}

// Len is the number of devices the command names.
func (c *Command) Len() int { return len(c.Devices) + len(c.Problems) }

// BatchKey is equal for commands that may share one ThingSpace call: same
// action, account and options.
func (c *Command) BatchKey() string {
	return string(c.Action) + ";accountName=" + strconv.Quote(c.AccountName) + ";" + c.Options.Key()
}

// CommandID picks a command's id: the body's commandId, else the Nats-Msg-Id
// header, else one derived from the stream sequence ("seq-<stream>-<seq>"),
// which is stable across redeliveries.
func CommandID(bodyID, natsMsgID, stream string, seq uint64) string {
	if id := strings.TrimSpace(bodyID); id != "" {
		return id
	}
	if id := strings.TrimSpace(natsMsgID); id != "" {
		return id
	}
	return "seq-" + stream + "-" + strconv.FormatUint(seq, 10)
}
