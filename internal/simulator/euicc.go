package simulator

import (
	"hash/fnv"
	"slices"
	"strconv"

	"github.com/esim-pipeline/thingspace-esim/internal/command"
)

// The simulator keeps what it has seen of each eUICC: the profiles (ICCIDs)
// that calls named together with its EID, and which of them are suspended
// with the device, so that device_suspend and device_resume answer one
// callback per profile the way their pages describe, "already suspended"
// and "already resumed" included.

// maxEUICCs bounds what the simulator remembers; past it, new eUICCs are not
// learned (their device-level actions answer with made-up profiles).
const maxEUICCs = 1 << 20

// madeUpProfiles is how many profiles an eUICC that no call has named a
// profile of is given.
const madeUpProfiles = 2

type profileState struct {
	iccid string
	// deviceSuspended: by device_suspend, undone by device_resume. (A
	// profile's own suspend and resume are not modelled: no answer of the
	// simulator depends on them.)
	deviceSuspended bool
}

type euicc struct {
	profiles []*profileState // in the order first named
}

func (e *euicc) profile(iccid string) *profileState {
	for _, p := range e.profiles {
		if p.iccid == iccid {
			return p
		}
	}
	return nil
}

// profileOutcome is one profile callback of a device-level action.
type profileOutcome struct {
	iccid string
	fail  bool
	fault string // why it failed: "Profile is already suspended"
}

// euiccOf returns the eUICC of eid, learning it if new; nil when full. s.emu is held.
func (s *Server) euiccOf(eid string, create bool) *euicc {
	e := s.euiccs[eid]
	if e == nil && create && len(s.euiccs) < maxEUICCs {
		e = &euicc{}
		s.euiccs[eid] = e
	}
	return e
}

// apply records what an accepted request does to the eUICCs it names, and
// for the device-level actions decides each profile's callback. It runs
// when the request is accepted, so a later request sees its effect.
func (s *Server) apply(rq *request) {
	s.emu.Lock()
	defer s.emu.Unlock()
	a := command.Action(rq.action)
	for i := range rq.devices {
		d := &rq.devices[i]
		eid, iccid := d.get("eid"), d.get("iccid")
		switch a {
		case command.DeviceSuspend, command.DeviceResume:
			e := s.euiccOf(eid, true)
			if e == nil {
				e = &euicc{} // not remembered
			}
			if len(e.profiles) == 0 {
				for n := range madeUpProfiles {
					e.profiles = append(e.profiles, &profileState{iccid: madeUpICCID(eid, n)})
				}
			}
			d.profiles = make([]profileOutcome, len(e.profiles))
			for j, p := range e.profiles {
				o := profileOutcome{iccid: p.iccid}
				if a == command.DeviceSuspend {
					if p.deviceSuspended {
						o.fail, o.fault = true, "Profile is already suspended"
					}
					p.deviceSuspended = true
				} else {
					if !p.deviceSuspended {
						o.fail, o.fault = true, "Profile is already resumed"
					}
					p.deviceSuspended = false
				}
				d.profiles[j] = o
			}
		default: // the actions naming the EID and the ICCID (suspend and resume name no EID)
			if eid == "" || iccid == "" {
				continue
			}
			e := s.euiccOf(eid, a != command.Delete)
			if e == nil {
				continue
			}
			p := e.profile(iccid)
			switch {
			case a == command.Delete && p != nil:
				e.profiles = slices.DeleteFunc(e.profiles, func(x *profileState) bool { return x == p })
			case a != command.Delete && p == nil:
				e.profiles = append(e.profiles, &profileState{iccid: iccid})
			}
		}
	}
}

// madeUpICCID is the n-th profile of an eUICC no call named a profile of:
// 20 digits, stable per EID, with a valid Luhn check digit.
func madeUpICCID(eid string, n int) string {
	h := fnv.New64a()
	_, _ = h.Write([]byte(eid + "/" + strconv.Itoa(n)))
	body := digits(h.Sum64(), 19, "8914800000")
	return body + strconv.Itoa(luhnDigit(body))
}

// luhnDigit is the check digit that makes body+digit pass the Luhn check.
func luhnDigit(body string) int {
	sum := 0
	for i := len(body) - 1; i >= 0; i-- {
		d := int(body[i] - '0')
		if (len(body)-1-i)%2 == 0 {
			d *= 2
			if d > 9 {
				d -= 9
			}
		}
		sum += d
	}
	return (10 - sum%10) % 10
}
