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
// before NATS does. Credentials in NATS_URL are presented to every server
// of the cluster, and never appear in a log line or an error.
func Connect(ctx context.Context, c config.NATS, name string, log zerolog.Logger) (*nats.Conn, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	servers, security, err := Options(c)
	if err != nil {
		return nil, err
	}
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
	opts = append(opts, security...)
	nc, err := nats.Connect(servers, opts...)
	if err != nil {
		return nil, fmt.Errorf("nats connect %s: %w", c.Redacted(), err)
	}
	for !nc.IsConnected() {
		select {
		case <-ctx.Done():
			nc.Close()
			return nil, fmt.Errorf("nats connect %s: %w", c.Redacted(), ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
	log.Info().Str("url", nc.ConnectedUrlRedacted()).Msg("nats connected")
	return nc, nil
}

// Options are the servers to dial (NATS_URL without its credentials) and
// the options that authenticate and secure the connection: the user,
// password or token NATS_URL carried, NATS_CREDS, and TLS with NATS_TLS_CA
// (the servers' CA; TLS required) and NATS_TLS_CERT/NATS_TLS_KEY (mutual
// TLS). nats.go reads the PEM files again on every reconnect, so rotated
// files are used from the next connection on. Tests and tools that dial
// NATS themselves use it to connect as the services do.
func Options(c config.NATS) (servers string, opts []nats.Option, err error) {
	servers, auth, err := c.Servers()
	if err != nil {
		return "", nil, err
	}
	type named struct {
		setting string
		opt     nats.Option
	}
	var all []named
	switch {
	case !auth.Token.IsZero():
		all = append(all, named{"NATS_URL", nats.Token(auth.Token.Reveal())})
	case !auth.IsZero():
		all = append(all, named{"NATS_URL", nats.UserInfo(auth.User, auth.Password.Reveal())})
		if inboxToken(auth.User) {
			// Replies to this user's requests (pull deliveries included)
			// come to a prefix only it may subscribe to: the
			// permissions of deploy/nats/permissions.conf allow each user
			// _INBOX.<user>.> alone, so no role reads another's replies.
			all = append(all, named{"NATS_URL", nats.CustomInboxPrefix(nats.InboxPrefix + auth.User)})
		}
	}
	if c.Creds != "" {
		all = append(all, named{"NATS_CREDS", nats.UserCredentials(c.Creds)})
	}
	if c.TLSCA != "" {
		all = append(all, named{"NATS_TLS_CA", nats.RootCAs(c.TLSCA)})
	}
	if c.TLSCert != "" {
		all = append(all, named{"NATS_TLS_CERT/NATS_TLS_KEY", nats.ClientCert(c.TLSCert, c.TLSKey)})
	}
	// The file options read their files when applied: a missing or bad
	// file is an error here, naming its setting, not a reconnect loop.
	var probe nats.Options
	for _, n := range all {
		if err := n.opt(&probe); err != nil {
			return "", nil, fmt.Errorf("%s: %w", n.setting, err)
		}
		opts = append(opts, n.opt)
	}
	return servers, opts, nil
}

// inboxToken reports whether a NATS user name can be a subject token of
// its inbox prefix: letters, digits, '-' and '_'.
func inboxToken(user string) bool {
	if user == "" {
		return false
	}
	for i := 0; i < len(user); i++ {
		c := user[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
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
