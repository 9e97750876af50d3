package dispatch

import (
	lru "github.com/hashicorp/golang-lru/v2"

	"github.com/esim-pipeline/thingspace-esim/internal/device"
	"github.com/esim-pipeline/thingspace-esim/internal/order"
)

// maxLinks is how many ICCID-to-EID links a dispatcher remembers (about
// 150 bytes each); the least recently named go first.
const maxLinks = 100_000

// links remembers which eUICC (EID) each profile (ICCID) is on, as the
// commands that name both say, so that a command naming the ICCID alone
// (suspend, resume) keeps publish order with one naming the EID alone
// (device_suspend, device_resume). Safe for concurrent use.
type links struct {
	eids *lru.Cache[string, string]
}

func newLinks() *links {
	c, _ := lru.New[string, string](maxLinks) // only a size below 1 fails
	return &links{eids: c}
}

// lanes are the order lanes of a device: its key, and the EID it names or
// is known to be on. A device naming both learns their link.
func (l *links) lanes(ids device.Set) order.Device {
	d := order.Device{Key: ids.Key()}
	eid := ids.Get(device.EID)
	iccid := ids.Get(device.ICCID)
	switch {
	case eid != "" && iccid != "":
		l.eids.Add(iccid, eid)
	case iccid != "":
		eid, _ = l.eids.Get(iccid)
	}
	if eid != "" && eid != d.Key {
		d.Also = []string{eid}
	}
	return d
}
