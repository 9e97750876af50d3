package natstest

import (
	"testing"

	"github.com/nats-io/nats-server/v2/server"
)

// WithTLS makes the server speak TLS only, with a certificate of ca for
// 127.0.0.1; with verify it also requires a client certificate signed by
// ca (mutual TLS).
func WithTLS(t testing.TB, ca *CA, verify bool) Option {
	t.Helper()
	pair := ca.Server("nats-server")
	cfg, err := server.GenTLSConfig(&server.TLSConfigOpts{
		CertFile: pair.CertFile, KeyFile: pair.KeyFile, CaFile: ca.CertFile, Verify: verify,
	})
	if err != nil {
		t.Fatalf("natstest: TLS config: %v", err)
	}
	return func(o *server.Options) {
		o.TLSConfig = cfg
		o.TLS = true
		o.TLSVerify = verify
		o.TLSTimeout = 2
	}
}

// WithAccounts takes the accounts, users and their permissions from a
// nats-server configuration file, as a deployment's servers read it (its
// variables from the environment: set them with t.Setenv first). The rest
// of the file (listen address, store, cluster) is ignored: the test's
// server keeps its own.
func WithAccounts(t testing.TB, file string) Option {
	t.Helper()
	fo, err := server.ProcessConfigFile(file)
	if err != nil {
		t.Fatalf("natstest: %s: %v", file, err)
	}
	if len(fo.Users) == 0 && len(fo.Nkeys) == 0 {
		t.Fatalf("natstest: %s defines no users", file)
	}
	return func(o *server.Options) {
		o.Accounts = fo.Accounts
		o.Users = fo.Users
		o.Nkeys = fo.Nkeys
		o.SystemAccount = fo.SystemAccount
		o.NoAuthUser = fo.NoAuthUser
	}
}
