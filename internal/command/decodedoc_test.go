package command

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

// decodeDoc must give what encoding/json gives, error or document, for any
// body: its fast path is only a faster way to the same document.
func FuzzDecodeDoc(f *testing.F) {
	files, _ := filepath.Glob("testdata/seeds/*.request.json")
	for _, file := range files {
		if b, err := os.ReadFile(file); err == nil {
			f.Add(b)
		}
	}
	for _, s := range []string{
		`{"a":1e400}`, `{"a":-0}`, `{"a":1.0000000000000001}`, `{"a":12345678901234567890}`,
		`{"a":"\ud800"}`, `{"a":"\ud83d\ude00"}`, `{"a":"\u0000"}`, `{"a":"\/"}`,
		`{"a":1,"a":2}`, `{"a":{"b":1},"a":{"c":2}}`, `{"A":1,"a":2}`,
		`[1,2,]`, `{"a":1}x`, `{"a":1} `, "\t{\"a\" : [ ] }\n", `{"a":tru}`, `nul`, `"x"`, `1`,
		"{\"a\":\"\xff\"}", `{"devices":[{"deviceIds":[{"kind":"iccid","id":"89148000000800000000"}]}]}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		got, gotErr := decodeDoc(body)
		var want any
		wantErr := json.Unmarshal(body, &want)
		if (gotErr != nil) != (wantErr != nil) {
			t.Fatalf("error %v, encoding/json says %v", gotErr, wantErr)
		}
		if gotErr == nil && !reflect.DeepEqual(got, want) {
			t.Fatalf("document %#v, encoding/json gives %#v", got, want)
		}
	})
}
