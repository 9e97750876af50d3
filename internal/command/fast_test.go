package command

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/esim-pipeline/thingspace-esim/internal/device"
)

// usualBody is what producers send: one device, a commandId.
const usualBody = `{"commandId":"c-1","accountName":"0000123456-00001","smsrOid":"1.3.6.1.4.1.31746.1.500.200.101.5",` +
	`"devices":[{"deviceIds":[{"kind":"eid","id":"89049032000000000000000000001230"},{"kind":"iccid","id":"89148000000840784251"}]}]}`

// fastSeeds are bodies for the fast path's tests: the API pages' requests,
// and the usual shapes with whitespace, key orders, duplicates, escapes and
// other near misses that must go the general way.
func fastSeeds(tb testing.TB) [][]byte {
	tb.Helper()
	files, err := filepath.Glob("testdata/seeds/*.request.json")
	require.NoError(tb, err)
	require.NotEmpty(tb, files)
	var seeds [][]byte
	for _, f := range files {
		b, err := os.ReadFile(f)
		require.NoError(tb, err)
		seeds = append(seeds, b)
	}
	const (
		eid   = "89049032000000000000000000001230"
		iccid = "89148000000840784251"
		imei  = "353456789012348"
	)
	for _, s := range []string{
		usualBody,
		" {\n \"devices\" : [ { \"deviceIds\" : [ { \"id\" : \"" + iccid + "\" , \"kind\" : \"ICCID\" } , {\"kind\":\"eid\",\"id\":\" " + eid + "\"} ] } ] ,\t\"accountName\":\"a\",\"smsrOid\":\"1.2\" }\r\n",
		`{"accountName":"a","smsrOid":"1.2","devices":[{"deviceIds":[{"kind":"eid","id":"` + eid + `"},{"kind":"iccid","id":"` + iccid + `"}]},{"deviceIds":[{"kind":"iccid","id":"` + iccid + `"},{"kind":"eid","id":"` + eid + `"}]}]}`,
		`{"accountName":"a","smsrOid":"1.2","devices":[{"deviceIds":[{"kind":"eid","id":"` + eid + `"},{"kind":"iccid","id":"` + iccid + `"},{"kind":"iccid","id":"89148000000840784269"}]}]}`,
		`{"accountName":"a","smsrOid":"1.2","devices":[{"deviceIds":[{"kind":"eid","id":"123"},{"kind":"iccid","id":"` + iccid + `"}]}]}`,
		`{"accountName":"a","servicePlan":"p","etfWaiver":false,"reasonCode":"FF","devices":[{"deviceIds":[{"kind":"imei","id":"` + imei + `"},{"kind":"iccid","id":"` + iccid + `"}]}]}`,
		`{"accountName":"a","servicePlan":"p","etfWaiver":true,"devices":[{"deviceIds":[{"kind":"iccid","id":"` + iccid + `"}]}]}`,
		`{"accountName":"a","servicePlan":"p","devices":[{"deviceIds":[{"kind":"iccid","id":"` + iccid + `"}]}],"commandId":""}`,
		`{"accountName":"a","accountName":"b","smsrOid":"1.2","devices":[{"deviceIds":[{"kind":"eid","id":"` + eid + `"},{"kind":"iccid","id":"` + iccid + `"}]}]}`,
		`{"accountName":"a\u0041","smsrOid":"1.2","devices":[{"deviceIds":[{"kind":"eid","id":"` + eid + `"},{"kind":"iccid","id":"` + iccid + `"}]}]}`,
		`{"AccountName":"a","smsrOid":"1.2","devices":[{"deviceIds":[{"kind":"eid","id":"` + eid + `"},{"kind":"iccid","id":"` + iccid + `"}]}]}`,
		`{"accountName":"a","smsrOid":"1.2","devices":[{"deviceIds":[{"kind":"eid","id":"` + eid + `","id":"1"},{"kind":"iccid","id":"` + iccid + `"}]}]}`,
		`{"accountName":"a","smsrOid":"1.2","devices":[{"deviceIds":[{"kind":"eid"},{"kind":"iccid","id":"` + iccid + `"}]}]}`,
		`{"accountName":"a","smsrOid":"1.2","devices":[{"deviceIds":[]}]}`,
		`{"accountName":"a","smsrOid":"1.2","devices":[]}`,
		`{"accountName":"a","smsrOid":"1.2","devices":[{"deviceIds":[{"kind":"eid","id":"` + eid + `"}],"x":1}]}`,
		`{"accountName":"a","smsrOid":"1.2","devices":[{"deviceIds":[{"kind":"eid","id":"` + eid + `"},{"kind":"iccid","id":"` + iccid + `"}]}]}x`,
		`{"accountName":"a","smsrOid":"1.2","devices":[{"deviceIds":[{"kind":"eid","id":"` + eid + `"},{"kind":"iccid","id":"` + iccid + `"}]},]}`,
		`{"accountName":"a","smsrOid":null,"devices":[{"deviceIds":[{"kind":"eid","id":"` + eid + `"},{"kind":"iccid","id":"` + iccid + `"}]}]}`,
		`{"accountName":"é","smsrOid":"1.2","devices":[{"deviceIds":[{"kind":"eid","id":"` + eid + `"},{"kind":"iccid","id":"` + iccid + `"}]}]}`,
		`{"accountName":"a","smsrOid":"1.2","etfWaiver":tru,"devices":[{"deviceIds":[{"kind":"iccid","id":"` + iccid + `"}]}]}`,
		`{"accountName":"a","smsrOid":"1.2","devices":[{"deviceIds":[{"kind":"EID","id":"` + eid + `"},{"kind":"iccid","id":"` + iccid + `"}]},{"deviceIds":[{"kind":"eid","id":"` + eid + `"},{"kind":"iccid","id":"` + iccid + `"}]}]}`,
		`{"accountName":"a","smsrOid":"1.2","devices":[{"deviceIds":[{"kind":"eid","id":"` + eid + `"},{"kind":"iccid","id":"` + iccid + `"}]}]`,
		`{"accountName":"a","smsrOid":"1.2","devices":{"deviceIds":[]}}`,
		`{}`, ``, `[]`, `{"devices"}`,
	} {
		seeds = append(seeds, []byte(s))
	}
	return seeds
}

// FuzzFastDecode holds the fast path to the general one: whatever it
// answers for is what Decode's general path makes of the same body, and the
// verdict key it looks up is the general path's own.
func FuzzFastDecode(f *testing.F) {
	for _, s := range fastSeeds(f) {
		for i := range Actions {
			f.Add(uint8(i), s, false)
		}
	}
	f.Fuzz(func(t *testing.T, which uint8, body []byte, checksums bool) {
		a := Actions[int(which)%len(Actions)]
		opts := device.Options{Checksums: checksums}
		want, wantErr := decodeGeneral(a, body, opts) // remembers a valid verdict
		var doc fastDoc
		if doc.parse(body) {
			if key := doc.verdictKey(a); key != "" {
				general, ok := generalVerdictKey(t, a, body)
				if !ok || key != general {
					t.Fatalf("verdict key %q, the general path's %q (cacheable %v)", key, general, ok)
				}
			}
		}
		got, ok := fastDecode(a, body, opts)
		if !ok {
			return
		}
		if wantErr != nil {
			t.Fatalf("the fast path decoded what the general path refuses: %v", wantErr)
		}
		require.Equal(t, want, got)
	})
}

// generalVerdictKey is the key decodeGeneral looks up for body.
func generalVerdictKey(t *testing.T, a Action, body []byte) (string, bool) {
	t.Helper()
	doc, err := decodeDoc(body)
	require.NoError(t, err, "the fast path parsed what encoding/json refuses")
	root := doc.(map[string]any)
	devices, _ := root["devices"].([]any)
	reduced, _ := group(devices)
	shallow := make(map[string]any, len(root))
	for k, v := range root {
		shallow[k] = v
	}
	shallow["devices"] = reduced
	return verdictKey(a, root, shallow)
}

func TestUsualBodiesTakeTheFastPathOnceTheirShapeIsKnown(t *testing.T) {
	for _, a := range Actions {
		seed := string(a)
		if a == Disable {
			seed = "enable" // the page's disable example is cut short
		}
		body, err := os.ReadFile("testdata/seeds/" + seed + ".request.json")
		if os.IsNotExist(err) { // the lifecycle actions: the page's example, as in schemas/
			body, err = os.ReadFile("../../schemas/examples/command-" + seed + ".json")
		}
		require.NoError(t, err)
		if a == Enable {
			body = []byte(usualBody)
		}
		want, err := decodeGeneral(a, body, device.Options{})
		require.NoError(t, err)
		got, ok := fastDecode(a, body, device.Options{})
		require.True(t, ok, "%s: the body went the general way", a)
		require.Equal(t, want, got)
	}

	// A body of 10,000 devices, each of one of two shapes.
	var b strings.Builder
	b.WriteString(`{"accountName":"a","smsrOid":"1.2","devices":[`)
	for i := range MaxDevices {
		if i > 0 {
			b.WriteByte(',')
		}
		eid, iccid := fmt.Sprintf(`{"kind":"eid","id":"890490320000000000000000%08d"}`, i), fmt.Sprintf(`{"kind":"iccid","id":"891480000008%08d"}`, i)
		if i%2 == 0 {
			fmt.Fprintf(&b, `{"deviceIds":[%s,%s]}`, eid, iccid)
		} else {
			fmt.Fprintf(&b, `{"deviceIds":[%s,%s]}`, iccid, eid)
		}
	}
	b.WriteString(`]}`)
	want, err := decodeGeneral(Enable, []byte(b.String()), device.Options{})
	require.NoError(t, err)
	got, ok := fastDecode(Enable, []byte(b.String()), device.Options{})
	require.True(t, ok)
	require.Len(t, got.Devices, MaxDevices)
	require.Equal(t, want, got)
}

func TestTheFastPathLeavesWhatItCannotJudgeToTheGeneralOne(t *testing.T) {
	const ids = `{"deviceIds":[{"kind":"eid","id":"89049032000000000000000000001230"},{"kind":"iccid","id":"89148000000840784251"}]}`
	for name, body := range map[string]string{
		"a shape never judged": `{"accountName":"never-seen","smsrOid":"9.9.9","devices":[` + ids + `]}`,
		"too many devices":     `{"accountName":"a","smsrOid":"1.2","devices":[` + strings.Repeat(ids+",", MaxDevices) + ids + `]}`,
	} {
		t.Run(name, func(t *testing.T) {
			_, ok := fastDecode(Enable, []byte(body), device.Options{})
			require.False(t, ok)
		})
	}
	c, err := Decode(Enable, []byte(`{"accountName":"a","smsrOid":"1.2","devices":[`+strings.Repeat(ids+",", MaxDevices)+ids+`]}`), device.Options{})
	require.NoError(t, err)
	require.ErrorContains(t, c.Err, "more than the 10000")
}

func TestFastFieldNamesAreInByteOrder(t *testing.T) {
	require.True(t, slices.IsSorted(fieldNames[:]), "verdictKey writes the fields sorted")
	require.Equal(t, "devices", fieldNames[fieldDevices])
	require.Equal(t, "commandId", fieldNames[fieldCommandID])
	require.Equal(t, "etfWaiver", fieldNames[fieldEtfWaiver])
}
