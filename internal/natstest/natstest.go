package natstest

import (
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Server is an embedded nats-server that can be stopped and started again on
// the same port and store, as a crash-and-restart of NATS would.
type Server struct {
	t    testing.TB
	opts server.Options
	srv  *server.Server
}

// Option changes the server's options before it starts.
type Option func(*server.Options)

// WithSyncAlways makes JetStream fsync every write (sync_interval: always).
func WithSyncAlways() Option {
	return func(o *server.Options) { o.SyncAlways = true }
}

// WithPort listens on a fixed port instead of a random one.
func WithPort(p int) Option { return func(o *server.Options) { o.Port = p } }

// WithStoreDir keeps JetStream data in dir.
func WithStoreDir(dir string) Option { return func(o *server.Options) { o.StoreDir = dir } }

// Run starts a JetStream server for the test and stops it at cleanup.
func Run(t testing.TB, opts ...Option) *Server {
	t.Helper()
	o := server.Options{
		Host:      "127.0.0.1",
		Port:      -1,
		JetStream: true,
		StoreDir:  t.TempDir(),
		NoLog:     true,
		NoSigs:    true,
	}
	for _, opt := range opts {
		opt(&o)
	}
	s := &Server{t: t, opts: o}
	s.Start()
	// Later starts reuse the port the first one picked.
	s.opts.Port = s.srv.Addr().(*net.TCPAddr).Port
	t.Cleanup(s.Shutdown)
	return s
}

// Start starts the server (again) and waits until it accepts clients.
func (s *Server) Start() {
	s.t.Helper()
	opts := s.opts
	srv, err := server.NewServer(&opts)
	if err != nil {
		s.t.Fatalf("natstest: new server: %v", err)
	}
	srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		s.t.Fatalf("natstest: server not ready")
	}
	s.srv = srv
}

// Shutdown stops the server and waits for it to finish.
func (s *Server) Shutdown() {
	if s.srv == nil {
		return
	}
	s.srv.Shutdown()
	s.srv.WaitForShutdown()
}

// URL is the client URL.
func (s *Server) URL() string {
	return "nats://" + net.JoinHostPort(s.opts.Host, strconv.Itoa(s.opts.Port))
}

// Inner is the running server.
func (s *Server) Inner() *server.Server { return s.srv }

// Connect opens a client connection closed at the test's cleanup.
func (s *Server) Connect() *nats.Conn {
	s.t.Helper()
	nc, err := nats.Connect(s.URL(), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		s.t.Fatalf("natstest: connect: %v", err)
	}
	s.t.Cleanup(nc.Close)
	return nc
}

// JetStream opens a client connection and its JetStream context.
func (s *Server) JetStream() (*nats.Conn, jetstream.JetStream) {
	s.t.Helper()
	nc := s.Connect()
	js, err := jetstream.New(nc)
	if err != nil {
		s.t.Fatalf("natstest: jetstream: %v", err)
	}
	return nc, js
}
