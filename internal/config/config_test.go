package config_test

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/esim-pipeline/thingspace-esim/internal/config"
)

type settings struct {
	url    string
	secret config.Secret
	user   string
	n      int
	wait   time.Duration
	on     bool
}

func declare(out *bytes.Buffer) (*config.Set, *settings) {
	var s settings
	set := config.NewSet("prog", out)
	set.String(&s.url, "url", "URL", "nats://x", "a url")
	set.Secret(&s.secret, "secret", "SECRET", "a secret")
	set.String(&s.user, "user", "USER_NAME", "", "a user")
	set.Int(&s.n, "n", "N", 3, "a number")
	set.Duration(&s.wait, "wait", "WAIT", time.Second, "a wait")
	set.Bool(&s.on, "on", "ON", false, "a switch")
	set.Required("SECRET")
	set.Sensitive("USER_NAME")
	return set, &s
}

func env(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func TestFlagsWinOverEnvironmentOverDefaults(t *testing.T) {
	set, s := declare(&bytes.Buffer{})
	require.NoError(t, set.Parse([]string{"--n", "7", "--on"}, env(map[string]string{"N": "5", "SECRET": "s3", "WAIT": "2m"})))
	require.Equal(t, 7, s.n)
	require.Equal(t, 2*time.Minute, s.wait)
	require.True(t, s.on)
	require.Equal(t, "nats://x", s.url)
	require.Equal(t, "s3", s.secret.Reveal())
}

func TestAMissingRequiredSettingNamesItsVariable(t *testing.T) {
	set, _ := declare(&bytes.Buffer{})
	require.EqualError(t, set.Parse(nil, env(nil)), "missing required setting SECRET (set the environment variable or --secret)")
}

func TestABadValueNamesItsVariable(t *testing.T) {
	set, _ := declare(&bytes.Buffer{})
	require.EqualError(t, set.Parse(nil, env(map[string]string{"SECRET": "x", "WAIT": "soon"})),
		`WAIT: want a Go duration such as 30s or 5m, got "soon"`)
}

func TestSecretsComeFromFilesAndNeverPrint(t *testing.T) {
	path := filepath.Join(t.TempDir(), "secret")
	require.NoError(t, os.WriteFile(path, []byte("from-file\n"), 0o600))
	set, s := declare(&bytes.Buffer{})
	require.NoError(t, set.Parse(nil, env(map[string]string{"SECRET_FILE": path, "USER_NAME": "cb-user"})))
	require.Equal(t, "from-file", s.secret.Reveal())
	require.Equal(t, "[redacted]", fmt.Sprint(s.secret))
	require.Equal(t, "[redacted]", fmt.Sprintf("%#v", s.secret))
	resolved := set.Resolved()
	require.Equal(t, "[redacted]", resolved["SECRET"])
	require.Equal(t, "[redacted]", resolved["USER_NAME"], "sensitive settings are masked too")
	require.Equal(t, "3", resolved["N"])
}

func TestHelpListsEveryVariable(t *testing.T) {
	var out bytes.Buffer
	set, _ := declare(&out)
	err := set.Parse([]string{"--help"}, env(nil))
	require.True(t, config.IsHelp(err))
	for _, v := range []string{"URL", "SECRET", "USER_NAME", "N", "WAIT", "ON"} {
		require.Contains(t, out.String(), "("+v+")")
	}
	require.Contains(t, out.String(), "SECRET_FILE")
}

func TestNATSURLCredentialsAreSplitOffAndNeverResolved(t *testing.T) {
	var n config.NATS
	set := config.NewSet("prog", &bytes.Buffer{})
	config.DeclareNATS(set, &n)
	url := "nats://svc:s3cr%40t@nats-1:4222, nats://svc:s3cr%40t@nats-2:4222,nats-3:4222"
	require.NoError(t, set.Parse(nil, env(map[string]string{"NATS_URL": url})))
	require.NoError(t, n.Validate())

	servers, auth, err := n.Servers()
	require.NoError(t, err)
	require.Equal(t, "nats://nats-1:4222,nats://nats-2:4222,nats://nats-3:4222", servers)
	require.Equal(t, "svc", auth.User)
	require.Equal(t, "s3cr@t", auth.Password.Reveal())

	resolved := set.Resolved()["NATS_URL"]
	require.NotContains(t, resolved, "s3cr")
	require.Equal(t, "nats://svc:[redacted]@nats-1:4222, nats://svc:[redacted]@nats-2:4222,nats-3:4222", resolved)
	require.NotContains(t, n.Redacted(), "s3cr")
}

func TestNATSURLRedaction(t *testing.T) {
	for _, tc := range []struct{ name, in, want string }{
		{name: "no_credentials", in: "nats://127.0.0.1:4222", want: "nats://127.0.0.1:4222"},
		{name: "user_and_password", in: "tls://u:p@h:4222", want: "tls://u:[redacted]@h:4222"},
		{name: "token", in: "nats://tok3n@h:4222", want: "nats://[redacted]@h:4222"},
		{name: "at_sign_in_the_password", in: "nats://u:p@ss@h", want: "nats://u:[redacted]@h"},
		{name: "no_scheme", in: "u:p@h:4222", want: "u:[redacted]@h:4222"},
		{name: "a_list", in: "nats://a:1@x,nats://b:2@y", want: "nats://a:[redacted]@x,nats://b:[redacted]@y"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			require.Equal(t, tc.want, config.RedactURLs(tc.in))
		})
	}
}

func TestNATSSettingsThatCannotWorkNameTheirVariable(t *testing.T) {
	for _, tc := range []struct {
		name string
		n    config.NATS
		want string
	}{
		{name: "cert_without_key", n: config.NATS{URL: "nats://h", TLSCert: "c.pem"}, want: "NATS_TLS_KEY"},
		{name: "key_without_cert", n: config.NATS{URL: "nats://h", TLSKey: "k.pem"}, want: "NATS_TLS_CERT"},
		{name: "two_identities", n: config.NATS{URL: "nats://a:1@x,nats://b:2@y"}, want: "other credentials"},
		{name: "no_url", n: config.NATS{URL: " , "}, want: "no server URL"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.n.Validate()
			require.ErrorContains(t, err, tc.want)
			require.NotContains(t, err.Error(), "1@", "a password in the error")
		})
	}
}

func TestHelpListsTheNATSTLSSettings(t *testing.T) {
	var out bytes.Buffer
	var n config.NATS
	set := config.NewSet("prog", &out)
	config.DeclareNATS(set, &n)
	require.True(t, config.IsHelp(set.Parse([]string{"--help"}, env(nil))))
	for _, v := range []string{"NATS_URL", "NATS_CREDS", "NATS_TLS_CA", "NATS_TLS_CERT", "NATS_TLS_KEY"} {
		require.Contains(t, out.String(), "("+v+")")
	}
}
