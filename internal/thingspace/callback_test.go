package thingspace_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/esim-pipeline/thingspace-esim/internal/thingspace"
)

func readSeed(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	require.NoError(t, err)
	return b
}

func TestParseCallback_accepts_every_seed_example(t *testing.T) {
	cases := []struct {
		file       string
		requestID  string
		success    bool
		want       map[string]string
		profile    string
		state      string
		hasCredOrN bool
	}{
		{"callback_enable.json", "595f5c44-c31c-4552-8670-020a1545a84d", true,
			map[string]string{"imei": "666456789014008", "eid": "666456789123456789123456784008", "iccid": "89148000000840784259", "mdn": "2022326360"},
			"enable", "Active", true},
		{"callback_disable.json", "595f5c44-c31c-4552-8670-020a1545a84d", true,
			map[string]string{"imei": "666456789014008", "eid": "666456789123456789123456784008", "iccid": "11245055053268336886", "mdn": "2022326360"},
			"disable", "Active", true},
		{"callback_delete.json", "595f5c44-c31c-4552-8670-020a1545a84d", true,
			map[string]string{"imei": "666456789014008", "eid": "666456789123456789123456784008", "iccid": "11245055053268336886", "mdn": "2022326360"},
			"delete", "Active", true},
		{"callback_deactivate.json", "d1f08526-5443-4054-9a29-4456490ea9f8", true,
			map[string]string{"iccid": "20-digit ICCID", "imei": "15-digit IMEI", "eid": "32-digit EID", "mdn": "10-digit phone number", "msisdn": "1+ 10-digit phone number"},
			"ENABLE", "DEACTIVE", false},
		{"callback_suspend.json", "d1f08526-5443-4054-9a29-4456490ea9f8", true,
			map[string]string{"iccid": "20-digit ICCID", "imei": "15-digit IMEI", "eid": "32-digit EID", "msisdn": "1+ 10-digit phone number"},
			"ENABLE", "SUSPENDED", false},
	}
	for _, tc := range cases {
		t.Run(tc.file, func(t *testing.T) {
			cb, err := thingspace.ParseCallback(readSeed(t, tc.file))
			require.NoError(t, err)
			assert.Equal(t, tc.requestID, cb.RequestID)
			assert.Equal(t, tc.success, cb.IsSuccess())
			assert.False(t, cb.IsFailed())
			assert.False(t, cb.IsWarning())
			assert.Equal(t, 1, cb.CallbackCount)
			assert.Equal(t, 4, cb.MaxCallbackThreshold)
			assert.Equal(t, tc.want, cb.Identifiers())
			require.NotNil(t, cb.Profile())
			assert.Equal(t, tc.profile, cb.Profile().ProfileStatus)
			assert.Equal(t, tc.state, cb.Profile().State)
			assert.Equal(t, tc.hasCredOrN, cb.Profile().DeviceCredential != nil)
			for _, id := range cb.DeviceIDs {
				assert.Equal(t, strings.ToLower(id.Kind), id.Kind, "kinds are lower-cased")
			}
		})
	}
}

func TestParseCallback_delete_example_really_has_a_trailing_comma(t *testing.T) {
	var v any
	require.Error(t, json.Unmarshal(readSeed(t, "callback_delete.json"), &v), "the seed must keep the page's quirk")
}

func TestParseCallback_tolerates(t *testing.T) {
	cases := []struct {
		name  string
		body  string
		check func(t *testing.T, cb *thingspace.Callback)
	}{
		{"counts_given_as_strings", `{"requestId":"r","status":"Success","deviceIds":[{"kind":"iccid","id":"1"}],"callbackCount":"2","maxCallbackThreshold":" 4 "}`,
			func(t *testing.T, cb *thingspace.Callback) {
				assert.Equal(t, 2, cb.CallbackCount)
				assert.Equal(t, 4, cb.MaxCallbackThreshold)
			}},
		{"kinds_and_status_in_any_case", `{"requestId":"r","status":"SUCCESS","deviceIds":[{"kind":"ICCID","id":"1"},{"kind":"Eid","id":"2"}]}`,
			func(t *testing.T, cb *thingspace.Callback) {
				assert.True(t, cb.IsSuccess())
				assert.Equal(t, map[string]string{"iccid": "1", "eid": "2"}, cb.Identifiers())
			}},
		{"warning_status", `{"requestId":"r","status":"WARNING","deviceIds":[{"kind":"iccid","id":"1"}]}`,
			func(t *testing.T, cb *thingspace.Callback) { assert.True(t, cb.IsWarning()) }},
		{"failed_with_fault", `{"requestId":"r","status":"failed","deviceIds":[{"kind":"iccid","id":"1"}],"faultResponse":{"faultcode":"X.Y","faultstring":"nope"}}`,
			func(t *testing.T, cb *thingspace.Callback) {
				assert.True(t, cb.IsFailed())
				require.NotNil(t, cb.FaultResponse)
				assert.Equal(t, "X.Y", cb.FaultResponse.FaultCode)
				assert.Equal(t, "nope", cb.FaultResponse.FaultString)
			}},
		{"unknown_keys", `{"requestId":"r","status":"Success","extra":{"a":[1,2]},"deviceIds":[{"kind":"iccid","id":"1","x":true}]}`,
			func(t *testing.T, cb *thingspace.Callback) { assert.Equal(t, "1", cb.Identifiers()["iccid"]) }},
		{"trailing_commas_in_objects_and_arrays", "{\"requestId\":\"r\",\"status\":\"Success\",\"deviceIds\":[{\"kind\":\"iccid\",\"id\":\"1\",} , ],\n}",
			func(t *testing.T, cb *thingspace.Callback) { assert.Equal(t, "1", cb.Identifiers()["iccid"]) }},
		{"commas_inside_strings_untouched", `{"requestId":"a,}b\",]","status":"Success","deviceIds":[{"kind":"iccid","id":"1"}]}`,
			func(t *testing.T, cb *thingspace.Callback) { assert.Equal(t, `a,}b",]`, cb.RequestID) }},
		{"device_response_as_array", `{"requestId":"r","status":"Success","deviceResponse":[{"deviceProfileResponse":[{"state":"Active","deviceIdentifierCollection":[{"kind":"EID","id":"9"}]}]}]}`,
			func(t *testing.T, cb *thingspace.Callback) {
				assert.Equal(t, "Active", cb.Profile().State)
				assert.Equal(t, map[string]string{"eid": "9"}, cb.Identifiers())
			}},
		{"id_as_number", `{"requestId":"r","status":"Success","deviceIds":[{"kind":"mdn","id":2022326360}]}`,
			func(t *testing.T, cb *thingspace.Callback) { assert.Equal(t, "2022326360", cb.Identifiers()["mdn"]) }},
		{"device_ids_win_over_the_collection", `{"requestId":"r","status":"Success","deviceIds":[{"kind":"iccid","id":"1"}],"deviceResponse":{"deviceProfileResponse":{"deviceIdentifierCollection":[{"kind":"iccid","id":"2"},{"kind":"imei","id":"3"}]}}}`,
			func(t *testing.T, cb *thingspace.Callback) {
				assert.Equal(t, map[string]string{"iccid": "1", "imei": "3"}, cb.Identifiers())
			}},
		{"nulls", `{"requestId":"r","status":"Success","deviceIds":[{"kind":"iccid","id":"1"}],"deviceResponse":null,"faultResponse":null,"callbackCount":null}`,
			func(t *testing.T, cb *thingspace.Callback) {
				assert.Nil(t, cb.Profile())
				assert.Zero(t, cb.CallbackCount)
			}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cb, err := thingspace.ParseCallback([]byte(tc.body))
			require.NoError(t, err)
			tc.check(t, cb)
		})
	}
}

func TestParseCallback_refuses_with_a_clear_error(t *testing.T) {
	cases := []struct{ name, body, want string }{
		{"empty_body", "  ", "empty body"},
		{"not_an_object", `[1,2]`, "want a JSON object, got an array"},
		{"malformed_json", `{"requestId":`, "malformed JSON"},
		{"missing_request_id", `{"status":"Success","deviceIds":[{"kind":"iccid","id":"1"}]}`, "requestId is missing"},
		{"missing_status", `{"requestId":"r","deviceIds":[{"kind":"iccid","id":"1"}]}`, "status is missing"},
		{"unknown_status", `{"requestId":"r","status":"Maybe","deviceIds":[{"kind":"iccid","id":"1"}]}`, `unknown status "Maybe"`},
		{"no_identifier", `{"requestId":"r","status":"Success","deviceIds":[]}`, "no device identifier"},
		{"count_not_a_number", `{"requestId":"r","status":"Success","deviceIds":[{"kind":"iccid","id":"1"}],"callbackCount":"two"}`, "callbackCount: want a whole number"},
		{"device_response_a_string", `{"requestId":"r","status":"Success","deviceIds":[{"kind":"iccid","id":"1"}],"deviceResponse":"x"}`, "deviceResponse: want an object, got a string"},
		{"request_id_an_object", `{"requestId":{},"status":"Success"}`, "requestId"},
		{"kind_an_object", `{"requestId":"r","status":"Success","deviceIds":[{"kind":{},"id":"1"}]}`, "kind: want a string"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cb, err := thingspace.ParseCallback([]byte(tc.body))
			require.Error(t, err)
			assert.Nil(t, cb)
			assert.ErrorIs(t, err, thingspace.ErrCallback)
			assert.Contains(t, err.Error(), tc.want)
		})
	}
}

func TestStripTrailingCommas_keeps_everything_else(t *testing.T) {
	in := `{"a":"x,}", "b":[1,2,] ,"c":"\",]" ,}`
	assert.Equal(t, `{"a":"x,}", "b":[1,2] ,"c":"\",]" }`, string(thingspace.StripTrailingCommas([]byte(in))))
	plain := []byte(`{"a":1}`)
	assert.Equal(t, plain, thingspace.StripTrailingCommas(plain))
}

func TestCallback_Redacted_drops_every_credential(t *testing.T) {
	body := strings.Replace(string(readSeed(t, "callback_enable.json")), `"username":""`, `"username":"listener-user"`, 1)
	body = strings.Replace(body, `"password":""`, `"password":"listener-pass"`, 1)
	cb, err := thingspace.ParseCallback([]byte(body))
	require.NoError(t, err)
	require.Equal(t, "listener-pass", cb.Password)
	red := cb.Redacted()
	out, err := json.Marshal(red)
	require.NoError(t, err)
	for _, secret := range []string{"listener-user", "listener-pass", "2022326360@vzw4g.com", "deviceCredential"} {
		assert.NotContains(t, string(out), secret)
	}
	assert.Equal(t, "listener-pass", cb.Password, "the original is untouched")
	assert.NotNil(t, cb.Profile().DeviceCredential)
}

func FuzzParseCallback(f *testing.F) {
	for _, name := range []string{"callback_enable.json", "callback_disable.json", "callback_delete.json",
		"callback_deactivate.json", "callback_suspend.json"} {
		f.Add(readSeed(f, name))
	}
	f.Add([]byte(`{"requestId":"r","status":"Success","deviceIds":[{"kind":"iccid","id":1,},],"callbackCount":"1"}`))
	f.Add([]byte(`{"deviceResponse":[null,{"deviceProfileResponse":[]}],"faultResponse":[]}`))
	f.Add([]byte(`"\u0000,]`))
	f.Fuzz(func(t *testing.T, body []byte) {
		cb, err := thingspace.ParseCallback(body)
		if err != nil {
			if cb != nil {
				t.Fatalf("error %v with a callback", err)
			}
			return
		}
		if cb.RequestID == "" || len(cb.Identifiers()) == 0 {
			t.Fatalf("accepted a callback without requestId or identifiers: %q", body)
		}
		if !cb.IsSuccess() && !cb.IsFailed() && !cb.IsWarning() {
			t.Fatalf("accepted status %q", cb.Status)
		}
		_ = cb.Redacted()
	})
}
