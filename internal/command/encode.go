package command

import (
	"encoding/json"

	"github.com/esim-pipeline/thingspace-esim/internal/device"
)

// wireID, wireDevice and wireBody are a command body as the API pages write
// it, in their field order, commandId last.
type wireID struct {
	Kind string `json:"kind"`
	ID   string `json:"id"`
}

type wireDevice struct {
	DeviceIDs []wireID `json:"deviceIds"`
}

type wireBody struct {
	Devices     []wireDevice `json:"devices"`
	AccountName string       `json:"accountName"`
	SmsrOid     string       `json:"smsrOid,omitempty"`
	ServicePlan string       `json:"servicePlan,omitempty"`
	EtfWaiver   *bool        `json:"etfWaiver,omitempty"`
	ReasonCode  string       `json:"reasonCode,omitempty"`
	CommandID   string       `json:"commandId,omitempty"`
}

// Encode writes the message body of a command for action a: the ThingSpace
// request body of its page, each device with the identifiers a takes (in
// the table's kind order; others are left out), the options, and commandId
// when id is not "". [Decode] reads it back; what a takes not is for the
// caller to leave zero (Decode refuses it).
func Encode(a Action, id, account string, opts Options, devices []device.Set) ([]byte, error) {
	b := wireBody{
		AccountName: account, SmsrOid: opts.SmsrOid, ServicePlan: opts.ServicePlan,
		EtfWaiver: opts.EtfWaiver, ReasonCode: opts.ReasonCode, CommandID: id,
		Devices: make([]wireDevice, len(devices)),
	}
	kinds := a.Kinds()
	for i, d := range devices {
		ids := make([]wireID, 0, len(kinds))
		for _, k := range kinds {
			if v := d.Get(k); v != "" {
				ids = append(ids, wireID{Kind: string(k), ID: v})
			}
		}
		b.Devices[i].DeviceIDs = ids
	}
	return json.Marshal(b)
}
