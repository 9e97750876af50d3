package deploy_test

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/types"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/stretchr/testify/require"
)

// devCertDir is where deploy/certs/make-dev-ca.sh writes, as compose
// resolves the bind mounts of docker-compose.yml.
func devCertDir(t *testing.T) string {
	t.Helper()
	d, err := filepath.Abs(filepath.Join(root, "deploy", "certs", "dev"))
	require.NoError(t, err)
	return d
}

// makeDevCA runs deploy/certs/make-dev-ca.sh into a temporary directory.
func makeDevCA(t *testing.T) string {
	t.Helper()
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Skip("openssl is not installed: make-dev-ca.sh needs it")
	}
	dir := t.TempDir()
	cmd := exec.Command("sh", filepath.Join("certs", "make-dev-ca.sh"))
	cmd.Env = append(os.Environ(), "CERT_DIR="+dir)
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "make-dev-ca.sh: %s", out)
	return dir
}

// processNATSConf reads a compose NATS config as nats-server would inside
// its container: the certificates of make-dev-ca.sh where it mounts them,
// the users' passwords in its environment.
func processNATSConf(t *testing.T, conf string) *server.Options {
	t.Helper()
	certs := makeDevCA(t)
	dir := t.TempDir()
	for _, f := range []string{filepath.Base(conf), "accounts.conf", "permissions.conf"} {
		b, err := os.ReadFile(filepath.Join(filepath.Dir(conf), f))
		require.NoError(t, err)
		b = []byte(strings.ReplaceAll(string(b), "/etc/nats/certs/", certs+"/"))
		require.NoError(t, os.WriteFile(filepath.Join(dir, f), b, 0o600))
	}
	for k, v := range natsPasswords {
		t.Setenv(k, v)
	}
	opts, err := server.ProcessConfigFile(filepath.Join(dir, filepath.Base(conf)))
	require.NoError(t, err, conf)
	require.NotNil(t, opts.TLSConfig, "%s: clients speak TLS", conf)
	require.Equal(t, tls.RequireAndVerifyClientCert, opts.TLSConfig.ClientAuth, "%s: clients show a certificate (mutual TLS)", conf)
	require.GreaterOrEqual(t, opts.TLSConfig.MinVersion, uint16(tls.VersionTLS12), conf)
	require.NotNil(t, opts.Cluster.TLSConfig, "%s: routes speak TLS", conf)
	require.Equal(t, tls.RequireAndVerifyClientCert, opts.Cluster.TLSConfig.ClientAuth, "%s: routes are mutual TLS", conf)
	users := map[string]*server.User{}
	for _, u := range opts.Users {
		users[u.Username] = u
	}
	for role, pw := range rolePassword {
		u, ok := users[role]
		require.True(t, ok, "%s: a user %s", conf, role)
		require.Equal(t, natsPasswords[pw], u.Password, "%s: %s's password comes from %s", conf, role, pw)
		require.NotNil(t, u.Permissions, "%s: %s has permissions", conf, role)
		require.Equal(t, "THINGSPACE", u.Account.Name, "%s: %s is in the pipeline's account", conf, role)
	}
	require.Equal(t, "SYS", opts.SystemAccount, conf)
	return opts
}

// requireNATSClient checks a compose service's NATS settings: its own user
// (with the password the servers read) in each URL, TLS with the CA and its
// own client certificate, all from the mounted dev certificates.
func requireNATSClient(t *testing.T, p *types.Project, svc types.ServiceConfig, env map[string]string, user string) {
	t.Helper()
	natsEnv := composeEnv(p.Services["nats-1"])
	for _, raw := range strings.Split(env["NATS_URL"], ",") {
		u, err := url.Parse(raw)
		require.NoError(t, err)
		require.NotNil(t, u.User, "%s NATS_URL names its user", svc.Name)
		require.Equal(t, user, u.User.Username(), svc.Name)
		pw, _ := u.User.Password()
		require.Equal(t, natsEnv[rolePassword[user]], pw, "%s presents the password nats-1 reads from %s", svc.Name, rolePassword[user])
	}
	require.Equal(t, "/etc/pipeline/certs/ca.pem", env["NATS_TLS_CA"], svc.Name)
	require.Equal(t, "/etc/pipeline/certs/"+user+".pem", env["NATS_TLS_CERT"], svc.Name)
	require.Equal(t, "/etc/pipeline/certs/"+user+"-key.pem", env["NATS_TLS_KEY"], svc.Name)
	var mounted bool
	for _, v := range svc.Volumes {
		if v.Type == types.VolumeTypeBind && v.Target == "/etc/pipeline/certs" {
			require.Equal(t, devCertDir(t), v.Source, svc.Name)
			require.True(t, v.ReadOnly, svc.Name)
			mounted = true
		}
	}
	require.True(t, mounted, "%s mounts the dev certificates", svc.Name)
}

var (
	logFormatRe = regexp.MustCompile(`(?s)log_format\s+(\S+)\s+(.*?);`)
	accessLogRe = regexp.MustCompile(`access_log\s+([^\s;]+)(?:\s+([^\s;]+))?\s*;`)
)

// requireNginxTLS checks the balancer's config: HTTPS only on the public
// port, TLS 1.2 or newer, the ingests reached over verified HTTPS, and no
// access log with the Basic user name in it.
func requireNginxTLS(t *testing.T, conf, port string) {
	t.Helper()
	require.Regexp(t, `listen\s+`+port+`\s+ssl;`, conf, "nginx serves %s with TLS", port)
	require.NotRegexp(t, `listen\s+(0\.0\.0\.0:)?`+port+`\s*;`, conf, "a plain listener on %s", port)
	require.Regexp(t, `ssl_protocols\s+TLSv1\.2\s+TLSv1\.3;`, conf)
	require.NotRegexp(t, `TLSv1(\.1)?[\s;]`, conf, "TLS 1.0 or 1.1 enabled")
	require.Regexp(t, `proxy_pass\s+https://callback_ingest;`, conf)
	require.NotRegexp(t, `proxy_pass\s+http://`, conf, "an ingest reached over plain HTTP")
	require.Regexp(t, `proxy_ssl_verify\s+on;`, conf)
	formats := map[string]string{}
	for _, m := range logFormatRe.FindAllStringSubmatch(conf, -1) {
		formats[m[1]] = m[2]
	}
	logs := accessLogRe.FindAllStringSubmatch(conf, -1)
	require.NotEmpty(t, logs)
	for _, m := range logs {
		if m[1] == "off" {
			continue
		}
		require.NotEmpty(t, m[2], "access_log %s uses nginx's default format, which logs $remote_user", m[1])
		f, ok := formats[m[2]]
		require.True(t, ok, "log_format %s is defined", m[2])
		for _, v := range []string{"$remote_user", "$http_authorization", "$request_body", "$request "} {
			require.NotContains(t, f, v, "log_format %s logs %s", m[2], v)
		}
	}
}

// TestDevCAScriptMakesEveryCertificateTheStackMounts runs make-dev-ca.sh
// and checks what it made against what docker-compose.yml, the NATS
// configs and nginx use: every file they name exists, every certificate
// chains to the CA, names the hosts it is used for and has the right use.
func TestDevCAScriptMakesEveryCertificateTheStackMounts(t *testing.T) {
	dir := makeDevCA(t)
	roots := x509.NewCertPool()
	caPEM, err := os.ReadFile(filepath.Join(dir, "ca.pem"))
	require.NoError(t, err)
	require.True(t, roots.AppendCertsFromPEM(caPEM))

	check := func(name string, usage x509.ExtKeyUsage, hosts ...string) *x509.Certificate {
		t.Helper()
		_, err := tls.LoadX509KeyPair(filepath.Join(dir, name+".pem"), filepath.Join(dir, name+"-key.pem"))
		require.NoError(t, err, name)
		b, err := os.ReadFile(filepath.Join(dir, name+".pem"))
		require.NoError(t, err)
		blk, _ := pem.Decode(b)
		require.NotNil(t, blk, name)
		c, err := x509.ParseCertificate(blk.Bytes)
		require.NoError(t, err, name)
		_, err = c.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{usage}})
		require.NoError(t, err, "%s chains to the CA for %v", name, usage)
		for _, h := range hosts {
			require.NoError(t, c.VerifyHostname(h), "%s is valid for %s", name, h)
		}
		return c
	}
	for _, n := range []string{"nats-1", "nats-2", "nats-3"} {
		check("nats-server", x509.ExtKeyUsageServerAuth, n)
	}
	check("nats-server", x509.ExtKeyUsageClientAuth) // routes dial out with it
	for user := range rolePassword {
		c := check(user, x509.ExtKeyUsageClientAuth)
		require.Equal(t, user, c.Subject.CommonName)
	}
	check("callback-ingest-https", x509.ExtKeyUsageServerAuth, "callback-ingest-1", "callback-ingest-2")
	check("callback-lb", x509.ExtKeyUsageServerAuth, "callback-lb", "localhost")

	// Every certificate path the stack names is one the script made.
	made, err := os.ReadDir(dir)
	require.NoError(t, err)
	var files []string
	for _, f := range made {
		files = append(files, f.Name())
	}
	var texts []string
	for _, f := range []string{filepath.Join(root, "docker-compose.yml"), filepath.Join("nginx", "nginx.conf"),
		filepath.Join("nats", "nats-1.conf"), filepath.Join("nats", "nats-2.conf"), filepath.Join("nats", "nats-3.conf")} {
		b, err := os.ReadFile(f)
		require.NoError(t, err)
		texts = append(texts, string(b))
	}
	named := regexp.MustCompile(`/etc/(?:pipeline|nginx|nats)/certs/([A-Za-z0-9_.-]+\.pem)`)
	n := 0
	for _, m := range named.FindAllStringSubmatch(strings.Join(texts, "\n"), -1) {
		require.True(t, slices.Contains(files, m[1]), "%s is named by the stack but not made by make-dev-ca.sh", m[1])
		n++
	}
	require.Greater(t, n, 10)
}
