package observability

import (
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/rs/zerolog"
)

// Field names used in every log line, snake_case.
const (
	FieldComponent = "component"
	FieldAction    = "action"
	FieldAccount   = "account_name"
	FieldRequestID = "request_id"
	FieldCommandID = "command_id"
	FieldEventID   = "event_id"
	FieldDevices   = "devices"
	FieldSubject   = "subject"
	FieldStatus    = "status"
	FieldDuration  = "duration"
	FieldAttempt   = "attempt"
	FieldReason    = "reason"
)

// NewLogger builds the JSON logger of a program: one event per line on w, UTC
// RFC 3339 timestamps, at the named level.
func NewLogger(w io.Writer, level, program string) (zerolog.Logger, error) {
	lvl, err := zerolog.ParseLevel(strings.ToLower(strings.TrimSpace(level)))
	if err != nil || level == "" {
		return zerolog.Nop(), fmt.Errorf("LOG_LEVEL: unknown level %q (want debug, info, warn or error)", level)
	}
	zerolog.TimeFieldFormat = time.RFC3339Nano
	return zerolog.New(w).Level(lvl).With().Timestamp().Str("program", program).Logger(), nil
}

// WatermillLogger adapts a zerolog logger to Watermill.
func WatermillLogger(l zerolog.Logger) watermill.LoggerAdapter { return wmLogger{l: l} }

type wmLogger struct{ l zerolog.Logger }

func (w wmLogger) fields(e *zerolog.Event, f watermill.LogFields) *zerolog.Event {
	for k, v := range f {
		e = e.Interface(k, v)
	}
	return e
}

func (w wmLogger) Error(msg string, err error, f watermill.LogFields) {
	w.fields(w.l.Error().Err(err), f).Msg(msg)
}
func (w wmLogger) Info(msg string, f watermill.LogFields)  { w.fields(w.l.Info(), f).Msg(msg) }
func (w wmLogger) Debug(msg string, f watermill.LogFields) { w.fields(w.l.Debug(), f).Msg(msg) }
func (w wmLogger) Trace(msg string, f watermill.LogFields) { w.fields(w.l.Trace(), f).Msg(msg) }
func (w wmLogger) With(f watermill.LogFields) watermill.LoggerAdapter {
	c := w.l.With()
	for k, v := range f {
		c = c.Interface(k, v)
	}
	return wmLogger{l: c.Logger()}
}
