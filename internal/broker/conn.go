package broker

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"

	"github.com/esim-pipeline/thingspace-esim/internal/config"
)

// Connect opens a connection that reconnects forever, logging its changes.
// It waits for the first connection until ctx ends, so services may start
// before NATS does.
func Connect(ctx context.Context, c config.NATS, name string, log zerolog.Logger) (*nats.Conn, error) {
	opts := []nats.Option{
		nats.Name(name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.ReconnectJitter(100*time.Millisecond, time.Second),
		nats.RetryOnFailedConnect(true),
		nats.ReconnectBufSize(-1), // publish fails at once while disconnected, never buffers silently
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			log.Warn().Err(err).Msg("nats disconnected")
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			log.Info().Str("url", nc.ConnectedUrlRedacted()).Msg("nats reconnected")
		}),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			ev := log.Warn().Err(err)
			if sub != nil {
				ev = ev.Str("subject", sub.Subject)
			}
			ev.Msg("nats async error")
		}),
	}
	if c.Creds != "" {
		opts = append(opts, nats.UserCredentials(c.Creds))
	}
	nc, err := nats.Connect(c.URL, opts...)
	if err != nil {
		return nil, fmt.Errorf("nats connect %s: %w", c.URL, err)
	}
	for !nc.IsConnected() {
		select {
		case <-ctx.Done():
			nc.Close()
			return nil, fmt.Errorf("nats connect %s: %w", c.URL, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
	log.Info().Str("url", nc.ConnectedUrlRedacted()).Msg("nats connected")
	return nc, nil
}

// Readiness tracks whether a service's streams are ready; with the
// connection it answers /readyz.
type Readiness struct {
	nc    *nats.Conn
	ready atomic.Bool
}

// NewReadiness watches nc.
func NewReadiness(nc *nats.Conn) *Readiness { return &Readiness{nc: nc} }

// SetReady marks the streams ready.
func (r *Readiness) SetReady() { r.ready.Store(true) }

// Check answers nil when connected and ready.
func (r *Readiness) Check() error {
	if !r.ready.Load() {
		return errors.New("streams not ready yet")
	}
	if r.nc == nil || !r.nc.IsConnected() {
		return errors.New("not connected to NATS")
	}
	return nil
}
