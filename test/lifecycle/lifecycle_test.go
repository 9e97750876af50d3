package lifecycle_test

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/esim-pipeline/thingspace-esim/internal/command"
	"github.com/esim-pipeline/thingspace-esim/internal/device"
	"github.com/esim-pipeline/thingspace-esim/internal/dispatch"
	"github.com/esim-pipeline/thingspace-esim/internal/pipelinetest"
	"github.com/esim-pipeline/thingspace-esim/internal/simulator"
	"github.com/esim-pipeline/thingspace-esim/internal/status"
	"github.com/esim-pipeline/thingspace-esim/internal/thingspace"
)

const (
	account = pipelinetest.Account
	smsrOid = pipelinetest.SmsrOid
	within  = 30 * time.Second
)

func iccid(n int) string { return fmt.Sprintf("8914800000%010d", n) }
func eid(n int) string   { return fmt.Sprintf("8904903200%022d", n) }

func ids(kv ...string) string {
	out := ""
	for i := 0; i < len(kv); i += 2 {
		if out != "" {
			out += ","
		}
		out += `{"kind":"` + kv[i] + `","id":"` + kv[i+1] + `"}`
	}
	return `{"deviceIds":[` + out + `]}`
}

// calls are the simulator's calls to the endpoint of action, in order.
func calls(s *pipelinetest.Stack, a command.Action) []simulator.Call {
	path, _ := thingspace.ActionPath(string(a))
	var out []simulator.Call
	for _, c := range s.Sim.Calls() {
		if c.Path == path && c.Status == 200 {
			out = append(out, c)
		}
	}
	return out
}

func statuses(evs []pipelinetest.Event) []status.Status {
	out := make([]status.Status, len(evs))
	for i, e := range evs {
		out[i] = e.Status
	}
	return out
}

func subject(a command.Action, key string) string {
	return status.SubjectPrefix + "." + string(a) + "." + key
}

func TestResumeSendsThePagesBodyAndEndsSucceeded(t *testing.T) {
	s := pipelinetest.Start(t)
	s.Publish(command.Resume, `{"commandId":"res-1","accountName":"`+account+`","servicePlan":"GlobalPlan","devices":[`+ids("ICCID", iccid(1))+`]}`)

	evs := s.Until(subject(command.Resume, iccid(1)), pipelinetest.FinalOf(iccid(1)), within)
	require.Equal(t, []status.Status{status.Accepted, status.Succeeded}, statuses(evs))
	for _, e := range evs {
		assert.Equal(t, "res-1", e.CommandID)
		assert.Equal(t, "resume", e.Action)
	}
	c := calls(s, command.Resume)
	require.Len(t, c, 1)
	assert.JSONEq(t, `{"devices":[{"deviceIds":[{"kind":"iccid","id":"`+iccid(1)+`"}]}],"accountName":"`+account+`","servicePlan":"GlobalPlan"}`, string(c[0].Body))
	assert.Equal(t, evs[0].RequestID, c[0].RequestID)
}

func TestDownloadsSendThePagesBodyAndEndSucceeded(t *testing.T) {
	s := pipelinetest.Start(t)
	for i, a := range []command.Action{command.DownloadEnable, command.DownloadDisable} {
		t.Run(string(a), func(t *testing.T) {
			e, ic := eid(10+i), iccid(10+i)
			s.Publish(a, `{"accountName":"`+account+`","smsrOid":"`+smsrOid+`","devices":[`+ids("eid", e, "iccid", ic)+`]}`)
			evs := s.Until(subject(a, ic), pipelinetest.FinalOf(ic), within)
			require.Equal(t, []status.Status{status.Accepted, status.Succeeded}, statuses(evs))
			require.NotNil(t, evs[1].Profile)
			assert.Equal(t, "DOWNLOAD_"+map[command.Action]string{command.DownloadEnable: "ENABLE", command.DownloadDisable: "DISABLE"}[a], evs[1].Profile.ProfileStatus)
			assert.Equal(t, e, evs[1].Device.EID)
			assert.Equal(t, ic, evs[1].Device.ICCID)
			c := calls(s, a)
			require.Len(t, c, 1)
			assert.JSONEq(t, `{"devices":[{"deviceIds":[{"kind":"eid","id":"`+e+`"},{"kind":"iccid","id":"`+ic+`"}]}],"accountName":"`+account+`","smsrOid":"`+smsrOid+`"}`, string(c[0].Body))
		})
	}
}

// device_suspend on an eUICC with three profiles: three profile events on
// the ICCIDs' subjects, then the device-level final on the EID's, the
// subject of its accepted event; device_resume undoes it the same way, and
// a second device_resume fails each profile ("already resumed") while the
// device-level callback still ends the EID.
func TestDeviceSuspendAndResumeAnswerPerProfileThenForTheDevice(t *testing.T) {
	s := pipelinetest.Start(t)
	e := eid(20)
	profiles := []string{iccid(21), iccid(22), iccid(23)}
	// The simulator learns the eUICC's profiles from the calls that name them.
	s.Publish(command.Enable, `{"accountName":"`+account+`","smsrOid":"`+smsrOid+`","devices":[`+
		ids("eid", e, "iccid", profiles[0])+","+ids("eid", e, "iccid", profiles[1])+","+ids("eid", e, "iccid", profiles[2])+`]}`)
	s.Until(status.SubjectPrefix+".enable.*", pipelinetest.FinalOf(profiles...), within)

	step := func(a command.Action, id string, profileStatus status.Status, state string) {
		t.Helper()
		s.Publish(a, `{"commandId":"`+id+`","accountName":"`+account+`","devices":[`+ids("eid", e)+`]}`)
		evs := s.Until(status.SubjectPrefix+"."+string(a)+".>", func(evs []pipelinetest.Event) bool {
			return pipelinetest.FinalOf(append([]string{e}, profiles...)...)(only(evs, id))
		}, within)
		evs = only(evs, id)
		require.Len(t, evs, 5, "accepted, three profiles, the device: %v", evs)
		// Events of different subjects are stored in no set order; on the
		// EID's subject, accepted comes first and the device-level final last.
		var onEID, onProfiles []pipelinetest.Event
		for _, ev := range evs {
			if ev.Subject == subject(a, e) {
				onEID = append(onEID, ev)
			} else {
				onProfiles = append(onProfiles, ev)
			}
		}
		require.Len(t, onEID, 2, "%v", evs)
		assert.Equal(t, status.Accepted, onEID[0].Status)
		assert.Equal(t, device.Set{EID: e}, onEID[0].Device)
		var got []string
		for _, ev := range onProfiles {
			got = append(got, ev.Device.ICCID)
			assert.Equal(t, subject(a, ev.Device.ICCID), ev.Subject)
			assert.Equal(t, device.Set{EID: e, ICCID: ev.Device.ICCID}, ev.Device)
			assert.Equal(t, profileStatus, ev.Status, "%v", ev)
			assert.Equal(t, onEID[0].RequestID, ev.RequestID)
			assert.True(t, ev.Final)
			if profileStatus == status.Failed {
				require.NotNil(t, ev.Reason)
				assert.Equal(t, "Profile is already resumed", ev.Reason.Message)
			} else {
				assert.Equal(t, state, ev.Profile.State)
			}
		}
		assert.ElementsMatch(t, profiles, got)
		last := onEID[1]
		assert.Equal(t, status.Succeeded, last.Status, "the device-level final")
		assert.True(t, last.Final)
		assert.Equal(t, device.Set{EID: e}, last.Device)
		assert.Equal(t, onEID[0].RequestID, last.RequestID)
		assert.Equal(t, state, last.Profile.State)
		assert.Equal(t, id, last.CommandID)
	}
	step(command.DeviceSuspend, "dsus-1", status.Succeeded, "SUSPENDED")
	step(command.DeviceResume, "dres-1", status.Succeeded, "ACTIVE")
	step(command.DeviceResume, "dres-2", status.Failed, "ACTIVE")

	c := calls(s, command.DeviceSuspend)
	require.Len(t, c, 1)
	assert.JSONEq(t, `{"devices":[{"deviceIds":[{"kind":"eid","id":"`+e+`"}]}],"accountName":"`+account+`"}`, string(c[0].Body),
		"the page's body: no servicePlan, smsrOid or mdnZipCode")
}

// only keeps the events of one command.
func only(evs []pipelinetest.Event, commandID string) []pipelinetest.Event {
	var out []pipelinetest.Event
	for _, e := range evs {
		if e.CommandID == commandID {
			out = append(out, e)
		}
	}
	return out
}

// Commands for one device published back to back reach ThingSpace in
// publish order, whatever their actions.
func TestASequenceOfActionsOnOneDeviceKeepsPublishOrder(t *testing.T) {
	tests := []struct {
		name    string
		actions []command.Action
	}{
		{"suspend then resume", []command.Action{command.Suspend, command.Resume, command.Suspend, command.Resume}},
		{"the local profile's whole life", []command.Action{command.DownloadEnable, command.Enable, command.Disable, command.Delete, command.DownloadDisable}},
	}
	s := pipelinetest.Start(t)
	for n, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, ic := eid(30+n), iccid(30+n)
			for i, a := range tt.actions {
				body := `{"commandId":"` + fmt.Sprintf("seq-%d-%d", n, i) + `","accountName":"` + account + `"`
				dev := ids("eid", e, "iccid", ic)
				if slices.Contains(a.Spec().Mandatory, "smsrOid") {
					body += `,"smsrOid":"` + smsrOid + `"`
				}
				if !slices.Contains(a.Kinds(), device.EID) {
					dev = ids("iccid", ic)
				}
				s.Publish(a, body+`,"devices":[`+dev+`]}`)
			}
			evs := s.Until(status.SubjectPrefix+".*."+ic, func(evs []pipelinetest.Event) bool {
				finals := 0
				for _, e := range evs {
					if e.Final {
						finals++
					}
				}
				return finals == len(tt.actions)
			}, within)
			var accepted []string
			for _, ev := range evs {
				require.NotEqual(t, status.Rejected, ev.Status, "%v", ev.Reason)
				if ev.Status == status.Accepted {
					accepted = append(accepted, ev.CommandID)
				}
			}
			var want []string
			for i := range tt.actions {
				want = append(want, fmt.Sprintf("seq-%d-%d", n, i))
			}
			assert.Equal(t, want, accepted, "accepted in publish order")
			var sent []string
			for _, c := range s.Sim.Calls() {
				for _, d := range c.Devices {
					for _, id := range d {
						if id.ID == ic && c.Status == 200 {
							sent = append(sent, c.Action)
						}
					}
				}
			}
			var wantSent []string
			for _, a := range tt.actions {
				wantSent = append(wantSent, string(a))
			}
			assert.Equal(t, wantSent, sent, "ThingSpace called in publish order")
		})
	}
}

// A device-level final that never comes is reconciled from the request
// status at the deadline, on the EID's subject, like any missing final.
func TestAMissingDeviceLevelFinalIsReconciled(t *testing.T) {
	s := pipelinetest.Start(t,
		pipelinetest.WithSimulator(simulator.Config{Seed: 7, Faults: simulator.Faults{RatePerMinute: -1, DropFinalShare: 1}}),
		pipelinetest.WithDispatcher(func(c *dispatch.Config) { c.CallbackDeadline = time.Second }))
	e := eid(40)
	s.Publish(command.DeviceSuspend, `{"commandId":"lost-1","accountName":"`+account+`","devices":[`+ids("eid", e)+`]}`)
	evs := s.Until(subject(command.DeviceSuspend, e), pipelinetest.FinalOf(e), within)
	require.Equal(t, []status.Status{status.Accepted, status.Succeeded}, statuses(evs))
	assert.Equal(t, "lost-1", evs[1].CommandID)
	assert.Equal(t, evs[0].RequestID, evs[1].RequestID)
	assert.Nil(t, evs[1].Profile, "made from the request status, not a callback")
}

// A device_suspend of an eUICC and a resume of one of its profiles name the
// same device: once a command has named both (here an enable), the resume
// waits for the device_suspend published before it, even when its own call
// would go first (a resume batch of one device is full at once, the
// device_suspend's waits BATCH_MAX_WAIT).
func TestOrderIsKeptAcrossTheEIDAndTheICCIDOfOneEUICC(t *testing.T) {
	s := pipelinetest.Start(t, pipelinetest.WithDispatcher(func(c *dispatch.Config) {
		c.BatchMaxWait = 300 * time.Millisecond
		c.BatchMaxDevicesPerAction = map[string]int{string(command.Resume): 1}
	}))
	e, ic := eid(50), iccid(50)
	s.Publish(command.Enable, `{"accountName":"`+account+`","smsrOid":"`+smsrOid+`","devices":[`+ids("eid", e, "iccid", ic)+`]}`)
	s.Until(subject(command.Enable, ic), pipelinetest.FinalOf(ic), within)

	s.Publish(command.DeviceSuspend, `{"commandId":"x-1","accountName":"`+account+`","devices":[`+ids("eid", e)+`]}`)
	s.Publish(command.Resume, `{"commandId":"x-2","accountName":"`+account+`","devices":[`+ids("iccid", ic)+`]}`)
	s.Until(subject(command.Resume, ic), pipelinetest.FinalOf(ic), within)
	s.Until(subject(command.DeviceSuspend, e), pipelinetest.FinalOf(e), within)

	var order []string
	for _, c := range s.Sim.Calls() {
		if c.Status == 200 && c.Action != "" {
			order = append(order, c.Action)
		}
	}
	require.Equal(t, []string{"enable", "device_suspend", "resume"}, order)
}
