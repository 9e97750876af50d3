package config

// NATS is what every program needs to reach NATS.
type NATS struct {
	URL   string // NATS_URL, comma-separated for a cluster
	Creds string // NATS_CREDS, path of a .creds file
}

// DeclareNATS adds NATS_URL and NATS_CREDS to s.
func DeclareNATS(s *Set, n *NATS) {
	s.String(&n.URL, "nats-url", "NATS_URL", "nats://127.0.0.1:4222", "NATS server URL(s), comma-separated for a cluster")
	s.String(&n.Creds, "nats-creds", "NATS_CREDS", "", "NATS .creds file")
}

// DeclareLogLevel adds LOG_LEVEL to s.
func DeclareLogLevel(s *Set, level *string) {
	s.String(level, "log-level", "LOG_LEVEL", "info", "log level: debug, info, warn, error")
}
