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
