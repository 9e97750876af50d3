package simulator_test

import (
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/esim-pipeline/thingspace-esim/internal/device"
	"github.com/esim-pipeline/thingspace-esim/internal/simulator"
	"github.com/esim-pipeline/thingspace-esim/internal/thingspace"
)

const iccid3 = "89148000000840784275"

func eidBody(e string) string {
	return `{"accountName":"` + account + `","devices":[{"deviceIds":[{"kind":"eid","id":"` + e + `"}]}]}`
}

// callbacksOf reads n callbacks and keeps those of requestId.
func callbacksOf(t *testing.T, l *listener, n int) []*thingspace.Callback {
	t.Helper()
	out := make([]*thingspace.Callback, n)
	for i := range out {
		out[i] = l.next(t).cb
	}
	return out
}

// device_suspend and device_resume: one callback per profile on the eUICC,
// then one for the device itself; a profile already in the state asked for
// is a failure callback of that profile.
func TestDeviceLevel_actions_answer_per_profile_then_for_the_device(t *testing.T) {
	e := newSim(t, simulator.Config{})
	e.login(t)
	l := newListener(t, nil)
	e.register(t, l, "u", "p")
	// Three profiles on one eUICC, as the enable calls named them.
	a := e.call(t, http.MethodPost, thingspace.ActionPathPrefix+"enable", enableBody([2]string{eid, iccid}, [2]string{eid, iccid2}, [2]string{eid, iccid3}), nil)
	require.Equal(t, http.StatusOK, a.status, a.raw)
	callbacksOf(t, l, 3)

	step := func(path, wantState, failure string) {
		t.Helper()
		a := e.call(t, http.MethodPost, thingspace.ActionPathPrefix+path, eidBody(eid), nil)
		require.Equal(t, http.StatusOK, a.status, a.raw)
		cbs := callbacksOf(t, l, 4)
		for i, want := range []string{iccid, iccid2, iccid3} {
			cb := cbs[i]
			assert.Equal(t, a.body["requestId"], cb.RequestID)
			ids := cb.Identifiers()
			assert.Equal(t, want, ids["iccid"], "profile %d in the order the eUICC learned them", i)
			assert.Equal(t, eid, ids["eid"])
			if failure != "" {
				assert.Equal(t, "Failed", cb.Status)
				require.NotNil(t, cb.FaultResponse)
				assert.Equal(t, failure, cb.FaultResponse.FaultString)
				continue
			}
			assert.Equal(t, "SUCCESS", cb.Status)
			assert.Equal(t, wantState, cb.Profile().State)
		}
		last := cbs[3]
		assert.Equal(t, map[string]string{"eid": eid}, last.Identifiers(), "the device-level callback names the EID alone")
		assert.Equal(t, "SUCCESS", last.Status)
		assert.Equal(t, wantState, last.Profile().State)
	}
	step("device_suspend", "SUSPENDED", "")
	step("device_suspend", "SUSPENDED", "Profile is already suspended")
	step("device_resume", "ACTIVE", "")
	step("device_resume", "ACTIVE", "Profile is already resumed")
}

func TestDeviceLevel_actions_on_an_unknown_eUICC_answer_for_made_up_valid_profiles(t *testing.T) {
	e := newSim(t, simulator.Config{})
	e.login(t)
	l := newListener(t, nil)
	e.register(t, l, "u", "p")
	a := e.call(t, http.MethodPost, thingspace.ActionPathPrefix+"device_suspend", eidBody(eid), nil)
	require.Equal(t, http.StatusOK, a.status, a.raw)
	cbs := callbacksOf(t, l, 3)
	for _, cb := range cbs[:2] {
		_, err := device.Parse(device.ICCID, cb.Identifiers()["iccid"], device.Options{Checksums: true})
		require.NoError(t, err)
	}
	assert.NotEqual(t, cbs[0].Identifiers()["iccid"], cbs[1].Identifiers()["iccid"])
	assert.Equal(t, map[string]string{"eid": eid}, cbs[2].Identifiers())
	require.Eventually(t, func() bool { return e.sim.Stats().CallbacksAnswered == 3 }, 5*time.Second, time.Millisecond)
	d := e.sim.Deliveries()
	require.Len(t, d, 3)
	assert.False(t, d[0].Final)
	assert.True(t, d[2].Final)
}

func TestLifecycle_actions_are_served_with_their_pages_bodies(t *testing.T) {
	cases := []struct {
		path, body, status, profileStatus, state string
	}{
		{"profile_resume", `{"accountName":"` + account + `","servicePlan":"GlobalPlan","devices":[{"deviceIds":[{"kind":"iccid","id":"` + iccid + `"}]}]}`, "SUCCESS", "ENABLE", "ACTIVE"},
		{"download_enable", enableBody(), "Success", "DOWNLOAD_ENABLE", "Active"},
		{"download_disable", enableBody(), "Success", "DOWNLOAD_DISABLE", "Active"},
	}
	for _, tc := range cases {
		t.Run(tc.path, func(t *testing.T) {
			e := newSim(t, simulator.Config{})
			e.login(t)
			l := newListener(t, nil)
			e.register(t, l, "u", "p")
			a := e.call(t, http.MethodPost, thingspace.ActionPathPrefix+tc.path, tc.body, nil)
			require.Equal(t, http.StatusOK, a.status, a.raw)
			cb := l.next(t).cb
			assert.Equal(t, tc.status, cb.Status)
			assert.Equal(t, iccid, cb.Identifiers()["iccid"])
			assert.Equal(t, tc.profileStatus, cb.Profile().ProfileStatus)
			assert.Equal(t, tc.state, cb.Profile().State)
		})
	}
}

func TestLifecycle_actions_refuse_what_their_pages_refuse(t *testing.T) {
	e := newSim(t, simulator.Config{})
	e.login(t)
	cases := []struct{ name, path, body, code string }{
		{"download_enable without smsrOid", "download_enable", `{"accountName":"` + account + `","devices":[{"deviceIds":[{"kind":"eid","id":"` + eid + `"},{"kind":"iccid","id":"` + iccid + `"}]}]}`, "INPUT_INVALID.SmsrOid.Invalid"},
		{"device_suspend without an EID", "device_suspend", `{"accountName":"` + account + `","devices":[{"deviceIds":[{"kind":"iccid","id":"` + iccid + `"}]}]}`, "400"},
		{"profile_resume without an ICCID", "profile_resume", eidBody(eid), "400"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			a := e.call(t, http.MethodPost, thingspace.ActionPathPrefix+tc.path, tc.body, nil)
			assert.Equal(t, http.StatusBadRequest, a.status, a.raw)
			assert.Contains(t, a.errorCode(), tc.code)
		})
	}
}
