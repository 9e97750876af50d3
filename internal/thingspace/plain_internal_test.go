package thingspace

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// FuzzPlainMatchesTolerant: whatever the one-pass decoder accepts, the
// tolerant decoder reads the same way; the fast path changes no answer.
func FuzzPlainMatchesTolerant(f *testing.F) {
	files, _ := filepath.Glob("testdata/callback_*.json")
	for _, p := range files {
		b, err := os.ReadFile(p)
		require.NoError(f, err)
		f.Add(b)
	}
	f.Add([]byte(`{"requestId":"r","status":"Success","deviceIds":[{"kind":"ICCID","id":" 1 "}],"callbackCount":"2"}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		trimmed := bytes.TrimSpace(body)
		if len(trimmed) == 0 || trimmed[0] != '{' {
			return
		}
		plain, ok := parsePlain(trimmed)
		if !ok {
			return
		}
		tolerant, err := parseTolerant(trimmed)
		if plainErr := plain.check(); plainErr != nil {
			require.Error(t, err, "plain refuses, tolerant must too")
			return
		}
		require.NoError(t, err)
		require.Equal(t, tolerant, plain)
	})
}
