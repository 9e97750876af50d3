package callback

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/esim-pipeline/thingspace-esim/internal/thingspace"
)

func TestStripCredentialsRemovesTheMembersAndKeepsTheRest(t *testing.T) {
	for _, tc := range []struct{ name, in, want string }{
		{name: "nothing_to_strip", in: `{"requestId":"r","status":"Success"}`, want: `{"requestId":"r","status":"Success"}`},
		{name: "first_members", in: `{"username":"u","password":"p","requestId":"r"}`, want: `{"requestId":"r"}`},
		{name: "last_members", in: `{"requestId":"r","username":"u","password":"p"}`, want: `{"requestId":"r"}`},
		{name: "only_members", in: `{"username":"u","password":"p"}`, want: `{}`},
		{name: "spaced", in: "{ \"a\" : 1 ,\n  \"password\" : \"p\" \n}", want: "{ \"a\" : 1  \n}"},
		{name: "between_others", in: `{"a":1,"password":"p","b":2}`, want: `{"a":1,"b":2}`},
		{name: "nested_device_credential", in: `{"deviceResponse":{"deviceProfileResponse":{"state":"Active","deviceCredential":{"username":"x@vzw4g.com","password":"y"},"ipAddress":"1"}}}`,
			want: `{"deviceResponse":{"deviceProfileResponse":{"state":"Active","ipAddress":"1"}}}`},
		{name: "in_an_array_of_responses", in: `{"deviceResponse":[{"deviceProfileResponse":[{"deviceCredential":{"password":"y"}}]}]}`,
			want: `{"deviceResponse":[{"deviceProfileResponse":[{}]}]}`},
		{name: "escaped_and_cased_names", in: `{"pass\u0077ord":"p","USERNAME":"u","a":1}`, want: `{"a":1}`},
		{name: "value_not_a_string", in: `{"password":{"a":["}"]},"a":1}`, want: `{"a":1}`},
		{name: "trailing_comma_kept_parseable", in: `{"a":1,"password":"p",}`, want: `{"a":1,}`},
		{name: "strings_that_look_like_keys", in: `{"a":"\"password\":\"p\"","b":["password"]}`, want: `{"a":"\"password\":\"p\"","b":["password"]}`},
		{name: "cut_off_value", in: `{"a":1,"password":"half`, want: `{"a":1`},
		{name: "not_json", in: `password=p&user=u`, want: `password=p&user=u`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			require.Equal(t, tc.want, string(stripCredentials([]byte(tc.in))))
		})
	}
}

func TestBodyCredentialsReadsTheTopLevelOnly(t *testing.T) {
	for _, tc := range []struct {
		name, in   string
		user, pass string
		ok         bool
	}{
		{name: "plain", in: `{"username":"u","password":"p"}`, user: "u", pass: "p", ok: true},
		{name: "escaped_value", in: `{"username":"u\u0031","password":"p\"q"}`, user: "u1", pass: `p"q`, ok: true},
		{name: "nested_only", in: `{"x":{"username":"u","password":"p"}}`},
		{name: "missing_password", in: `{"username":"u"}`},
		{name: "number_password", in: `{"username":"u","password":12}`},
		{name: "after_a_large_value", in: `{"d":[` + strings.Repeat(`{"password":"no"},`, 1000) + `1],"username":"u","password":"p"}`, user: "u", pass: "p", ok: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u, p, ok := bodyCredentials([]byte(tc.in))
			require.Equal(t, tc.ok, ok)
			if ok {
				require.Equal(t, tc.user, u)
				require.Equal(t, tc.pass, p)
			}
		})
	}
}

// FuzzStripCredentials: for any body, stripping never panics, never grows
// the body, leaves no credential member the scanner can find (broken JSON
// included), and a body
// that parsed as a callback before parses after to the same callback, its
// credentials aside.
func FuzzStripCredentials(f *testing.F) {
	seeds, _ := filepath.Glob(filepath.Join("testdata", "seed_*.json"))
	for _, s := range seeds {
		b, err := os.ReadFile(s)
		require.NoError(f, err)
		f.Add(b)
	}
	f.Add([]byte(`{"username":"u","password":"p","requestId":"r","status":"Success","deviceIds":[{"kind":"iccid","id":"89148000000840784259"}],}`))
	f.Add([]byte(`{"a":[{"password":{"x":"}"}},"username"],"password":"`))
	f.Fuzz(func(t *testing.T, body []byte) {
		in := append([]byte(nil), body...)
		before, beforeErr := thingspace.ParseCallback(in)
		out := stripCredentials(body)
		if len(out) > len(in) {
			t.Fatalf("stripping grew the body from %d to %d bytes", len(in), len(out))
		}
		if hasCredentials(out) {
			t.Fatalf("credentials left in %q (from %q)", out, in)
		}
		if beforeErr != nil {
			return
		}
		after, err := thingspace.ParseCallback(out)
		if err != nil {
			t.Fatalf("a callback no longer parses once stripped: %v\nbefore: %q\nafter:  %q", err, in, out)
		}
		forgetCredentials(before)
		forgetCredentials(after)
		if b, a := mustJSON(t, before), mustJSON(t, after); b != a {
			t.Fatalf("stripping changed the callback:\nbefore: %s\nafter:  %s", b, a)
		}
	})
}

func mustJSON(t *testing.T, v any) string {
	b, err := json.Marshal(v)
	require.NoError(t, err)
	return string(b)
}
