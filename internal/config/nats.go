package config

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
)

// NATS is what every program needs to reach NATS.
type NATS struct {
	// URL is NATS_URL: one server URL or a comma-separated list for a
	// cluster. A URL may carry user:password@ (NATS user authentication)
	// or token@; both are secrets, shown by [NATS.Redacted] and in
	// Resolved without them.
	URL string
	// Creds is NATS_CREDS, path of a .creds file (JWT and nkey seed).
	Creds string
	// TLSCA is NATS_TLS_CA: PEM file of the CA that signed the servers'
	// certificates. Set, the connection requires TLS.
	TLSCA string
	// TLSCert and TLSKey are NATS_TLS_CERT and NATS_TLS_KEY: the client's
	// PEM certificate and key, for servers that verify clients (mutual
	// TLS). The files are read again on every reconnect, so a rotated
	// pair is used from the next connection on.
	TLSCert, TLSKey string
}

// DeclareNATS adds NATS_URL, NATS_CREDS and the NATS_TLS_* settings to s.
func DeclareNATS(s *Set, n *NATS) {
	s.String(&n.URL, "nats-url", "NATS_URL", "nats://127.0.0.1:4222", "NATS server URL(s), comma-separated for a cluster; user:password@ in a URL authenticates (never logged)")
	s.mask("NATS_URL", RedactURLs)
	s.String(&n.Creds, "nats-creds", "NATS_CREDS", "", "NATS .creds file")
	s.String(&n.TLSCA, "nats-tls-ca", "NATS_TLS_CA", "", "PEM file of the CA that signed the NATS servers' certificates (then TLS is required)")
	s.String(&n.TLSCert, "nats-tls-cert", "NATS_TLS_CERT", "", "PEM client certificate for NATS mutual TLS (with NATS_TLS_KEY)")
	s.String(&n.TLSKey, "nats-tls-key", "NATS_TLS_KEY", "", "PEM private key of NATS_TLS_CERT")
}

// DeclareLogLevel adds LOG_LEVEL to s.
func DeclareLogLevel(s *Set, level *string) {
	s.String(level, "log-level", "LOG_LEVEL", "info", "log level: debug, info, warn, error")
}

// Validate reports a setting that cannot work, naming its variable.
func (n NATS) Validate() error {
	switch {
	case n.TLSCert != "" && n.TLSKey == "":
		return errors.New("NATS_TLS_KEY: missing required setting: NATS_TLS_CERT is set")
	case n.TLSCert == "" && n.TLSKey != "":
		return errors.New("NATS_TLS_CERT: missing required setting: NATS_TLS_KEY is set")
	}
	_, _, err := n.Servers()
	return err
}

// Auth is the user authentication NATS_URL carries.
type Auth struct {
	User     string
	Password Secret
	Token    Secret // a URL with a user part and no password: token@host
}

// IsZero reports that NATS_URL carries no credentials.
func (a Auth) IsZero() bool { return a.User == "" && a.Password.IsZero() && a.Token.IsZero() }

// Servers splits NATS_URL into the server URLs without their credentials
// (comma-separated, as nats.Connect takes them) and the credentials they
// carried. Every URL that carries credentials must carry the same ones:
// the client presents one identity to the whole cluster, also to servers
// it learns of later, whose URLs carry none.
func (n NATS) Servers() (servers string, auth Auth, err error) {
	var out []string
	seen := false
	for i, raw := range strings.Split(n.URL, ",") {
		raw = strings.TrimSpace(raw)
		if raw == "" {
			continue
		}
		if !strings.Contains(raw, "://") {
			raw = "nats://" + raw
		}
		u, perr := url.Parse(raw)
		if perr != nil || u.Host == "" {
			return "", Auth{}, fmt.Errorf("NATS_URL: URL %d (%s) is not a URL", i+1, RedactURLs(raw))
		}
		if u.User != nil {
			var a Auth
			if p, ok := u.User.Password(); ok {
				a.User, a.Password = u.User.Username(), NewSecret(p)
			} else {
				a.Token = NewSecret(u.User.Username())
			}
			if seen && a != auth {
				return "", Auth{}, fmt.Errorf("NATS_URL: URL %d (%s) carries other credentials than an earlier one", i+1, RedactURLs(raw))
			}
			auth, seen = a, true
			u.User = nil
		}
		out = append(out, u.String())
	}
	if len(out) == 0 {
		return "", Auth{}, errors.New("NATS_URL: no server URL")
	}
	return strings.Join(out, ","), auth, nil
}

// Redacted is NATS_URL as it may be logged: passwords and tokens replaced.
func (n NATS) Redacted() string { return RedactURLs(n.URL) }

// redactedText stands in for a secret part of a URL.
const redactedText = "[redacted]"

// RedactURLs returns a comma-separated list of URLs with every password
// (user:password@) and token (token@) replaced by [redacted]; a part that
// does not parse loses everything before its last '@'.
func RedactURLs(list string) string {
	parts := strings.Split(list, ",")
	for i, raw := range parts {
		lead := raw[:len(raw)-len(strings.TrimLeft(raw, " "))]
		raw = strings.TrimSpace(raw)
		at := strings.LastIndex(raw, "@")
		if at < 0 {
			parts[i] = lead + raw
			continue
		}
		scheme, rest := "", raw
		if k := strings.Index(raw, "://"); k >= 0 && k < at {
			scheme, rest = raw[:k+3], raw[k+3:]
			at -= k + 3
		}
		userinfo, host := rest[:at], rest[at+1:]
		if user, _, hasPass := strings.Cut(userinfo, ":"); hasPass {
			parts[i] = lead + scheme + user + ":" + redactedText + "@" + host
			continue
		}
		parts[i] = lead + scheme + redactedText + "@" + host
	}
	return strings.Join(parts, ",")
}
