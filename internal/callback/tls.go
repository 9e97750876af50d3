package callback

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/esim-pipeline/thingspace-esim/internal/observability"
)

// certPollInterval is how often the certificate files are read again. The
// contract gives a rewritten certificate 10 s to reach new connections.
const certPollInterval = 2 * time.Second

// certReloader serves the key pair of two PEM files that may be rewritten
// in place while the ingest runs (cert-manager, certbot, a hand copy).
//
// It reads both files every certPollInterval and compares their bytes with
// the pair it loaded last, instead of watching them with fsnotify: a
// rewrite in place, a rename over the file and Kubernetes' symlink swap of
// a mounted Secret all show up as new bytes, there is no watch to lose when
// the watched file is replaced or its directory is a symlink, and two small
// reads every two seconds cost nothing. A pair that does not load (a
// half-written file, a new certificate beside the old key) is logged and
// skipped: the last good pair keeps being served, and the next poll tries
// again.
type certReloader struct {
	certFile, keyFile string
	log               zerolog.Logger
	onReload          func(ok bool)

	cur atomic.Pointer[tls.Certificate]

	mu                sync.Mutex // guards what the last poll saw
	lastCert, lastKey []byte     // the bytes of the pair last tried
}

// newCertReloader loads the pair once; an error names the file at fault.
func newCertReloader(certFile, keyFile string, log zerolog.Logger, onReload func(ok bool)) (*certReloader, error) {
	r := &certReloader{certFile: certFile, keyFile: keyFile, log: log, onReload: onReload}
	changed, err := r.reload()
	if err != nil {
		return nil, err
	}
	if !changed {
		return nil, errors.New("TLS_CERT_FILE: no certificate loaded")
	}
	return r, nil
}

// getCertificate is tls.Config.GetCertificate: every new connection gets
// the pair loaded last.
func (r *certReloader) getCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return r.cur.Load(), nil
}

// tlsConfig is the public listener's TLS: 1.2 or newer, Go's default
// cipher suites (all AEAD with forward secrecy for TLS 1.2), the
// certificate from r.
func (r *certReloader) tlsConfig() *tls.Config {
	return &tls.Config{
		MinVersion:     tls.VersionTLS12,
		GetCertificate: r.getCertificate,
	}
}

// run polls the files until ctx ends.
func (r *certReloader) run(ctx context.Context) {
	t := time.NewTicker(certPollInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		changed, err := r.reload()
		switch {
		case err != nil:
			r.log.Warn().Str(observability.FieldReason, err.Error()).
				Msg("TLS certificate files changed but do not load; still serving the previous certificate")
		case changed:
			leaf := r.cur.Load().Leaf
			r.log.Info().Str("subject", leaf.Subject.String()).Time("not_after", leaf.NotAfter).
				Msg("TLS certificate reloaded")
		}
	}
}

// reload reads the pair and, when its bytes differ from the last pair
// tried, loads it. It reports whether a new pair is now served; an error
// means the new bytes did not load (reported once per distinct content).
func (r *certReloader) reload() (bool, error) {
	certPEM, err := os.ReadFile(r.certFile)
	if err != nil {
		return false, fmt.Errorf("TLS_CERT_FILE: %w", err)
	}
	keyPEM, err := os.ReadFile(r.keyFile)
	if err != nil {
		return false, fmt.Errorf("TLS_KEY_FILE: %w", err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if bytes.Equal(certPEM, r.lastCert) && bytes.Equal(keyPEM, r.lastKey) {
		return false, nil
	}
	r.lastCert, r.lastKey = certPEM, keyPEM
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err == nil && pair.Leaf == nil {
		pair.Leaf, err = x509.ParseCertificate(pair.Certificate[0])
	}
	if r.onReload != nil && r.cur.Load() != nil {
		r.onReload(err == nil)
	}
	if err != nil {
		// tls's errors name no file content, only what is wrong.
		return false, fmt.Errorf("TLS_CERT_FILE/TLS_KEY_FILE: %w", err)
	}
	r.cur.Store(&pair)
	return true, nil
}
