package natstest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"
)

// CA is a certificate authority made for one test: it signs server and
// client certificates for 127.0.0.1 and localhost, written as PEM files in
// the test's temporary directory.
type CA struct {
	t      testing.TB
	dir    string
	cert   *x509.Certificate
	key    *ecdsa.PrivateKey
	serial atomic.Int64
	// CertFile is the CA certificate, PEM: what clients trust.
	CertFile string
	// Pool holds the CA certificate.
	Pool *x509.CertPool
}

// Pair is a certificate and its key as PEM files.
type Pair struct {
	CertFile, KeyFile string
	// Serial tells pairs of one CA apart.
	Serial *big.Int
	// CertPEM and KeyPEM are the files' contents.
	CertPEM, KeyPEM []byte
}

// NewCA makes a CA valid for a day.
func NewCA(t testing.TB) *CA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatalf("natstest: CA key: %v", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "thingspace-esim test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatalf("natstest: CA certificate: %v", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatalf("natstest: CA certificate: %v", err)
	}
	ca := &CA{t: t, dir: t.TempDir(), cert: cert, key: key, Pool: x509.NewCertPool()}
	ca.serial.Store(1)
	ca.Pool.AddCert(cert)
	ca.CertFile = filepath.Join(ca.dir, "ca.pem")
	ca.write(ca.CertFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
	return ca
}

func (ca *CA) write(path string, b []byte) {
	ca.t.Helper()
	if err := os.WriteFile(path, b, 0o600); err != nil {
		ca.t.Fatalf("natstest: write %s: %v", path, err)
	}
}

// Server issues a server certificate for 127.0.0.1 and localhost, written
// to <name>.pem and <name>-key.pem.
func (ca *CA) Server(name string) Pair { return ca.issue(name, x509.ExtKeyUsageServerAuth) }

// Client issues a client certificate (for mutual TLS) with CommonName name.
func (ca *CA) Client(name string) Pair { return ca.issue(name, x509.ExtKeyUsageClientAuth) }

// Issue makes a pair like Server does, without writing it: for a test that
// rewrites a served pair in place.
func (ca *CA) Issue(name string) Pair {
	ca.t.Helper()
	return ca.make(name, x509.ExtKeyUsageServerAuth)
}

func (ca *CA) issue(name string, usage x509.ExtKeyUsage) Pair {
	ca.t.Helper()
	p := ca.make(name, usage)
	p.CertFile = filepath.Join(ca.dir, name+".pem")
	p.KeyFile = filepath.Join(ca.dir, name+"-key.pem")
	ca.write(p.CertFile, p.CertPEM)
	ca.write(p.KeyFile, p.KeyPEM)
	return p
}

func (ca *CA) make(name string, usage x509.ExtKeyUsage) Pair {
	ca.t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		ca.t.Fatalf("natstest: key: %v", err)
	}
	serial := big.NewInt(ca.serial.Add(1))
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{usage},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		ca.t.Fatalf("natstest: certificate: %v", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		ca.t.Fatalf("natstest: key: %v", err)
	}
	return Pair{
		Serial:  serial,
		CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		KeyPEM:  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
	}
}

// ClientTLS is a client config that trusts the CA (and presents client, when
// given, for mutual TLS).
func (ca *CA) ClientTLS(client *Pair) *tls.Config {
	ca.t.Helper()
	cfg := &tls.Config{RootCAs: ca.Pool, MinVersion: tls.VersionTLS12}
	if client != nil {
		pair, err := tls.X509KeyPair(client.CertPEM, client.KeyPEM)
		if err != nil {
			ca.t.Fatalf("natstest: client pair: %v", err)
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	return cfg
}
