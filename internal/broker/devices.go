package broker

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/esim-pipeline/thingspace-esim/internal/status"
)

// The EID index (bucket [EIDBucket]) answers the question the status
// subjects cannot: under which ids (ICCIDs) were the events that named an
// EID filed? Status events go to thingspace.profile.status.<action>.<id>,
// id the ICCID where one is known, so the events of one eUICC's profiles
// are spread over one subject id per profile. The index holds one key
// <eid>.<id> per such pair (its value, the subjects it points at, is for
// people reading the bucket); the ingest writes it from the status stream,
// whoever published the event. A lookup by EID reads the keys under the EID
// and then the status subjects of each id.

// EIDIndexKey is the index key saying that an event naming eid was filed
// under the subject id key (the last token of its subject). It reports
// false when the pair needs no key (the event is filed under the EID
// itself) or cannot have one (a value that is no key token).
func EIDIndexKey(eid, key string) (string, bool) {
	if eid == key || !keyToken(eid) || !keyToken(key) {
		return "", false
	}
	return eid + "." + key, true
}

// EIDIndexSubject is the subject that stores index key k in the bucket.
func EIDIndexSubject(k string) string { return "$KV." + EIDBucket + "." + k }

// EIDIndexValue is the value of the key of subject id key: the status
// subjects of that id.
func EIDIndexValue(key string) []byte { return []byte(status.DeviceSubjects(key)) }

// keyToken reports whether s can be one token of a KV key and of a status
// subject as it stands: 1 to 64 letters, digits, '-' or '_'. Identifiers
// that passed validation always can.
func keyToken(s string) bool { return len(s) <= 64 && inboxToken(s) }

// EventEID reads the EID an encoded status event names ("" for none). The
// ingest reads it of every status event, so the common shape (what
// status.Event.AppendJSON and encoding/json write: no white space, the
// device object flat) is read with a scan; anything else is decoded.
func EventEID(data []byte) string {
	if eid, ok := scanEID(data); ok {
		return eid
	}
	var ev struct {
		Device struct {
			EID string `json:"eid"`
		} `json:"device"`
	}
	if json.Unmarshal(data, &ev) != nil {
		return ""
	}
	return ev.Device.EID
}

var (
	deviceKey = []byte(`"device":{`)
	eidKey    = []byte(`"eid":"`)
)

// scanEID finds the device object's eid without decoding the event; false
// when the event is not of the plain shape the scan can be sure of. In JSON
// a quote inside a string is escaped, so `"device":{` outside of one is the
// key itself.
func scanEID(data []byte) (string, bool) {
	if bytes.Count(data, deviceKey) != 1 {
		return "", false // none, or a repeated key (the last one counts)
	}
	i := bytes.Index(data, deviceKey)
	obj := data[i+len(deviceKey):]
	end := bytes.IndexByte(obj, '}')
	if end < 0 {
		return "", false
	}
	obj = obj[:end]
	// A flat object of plain strings: no escape, no nesting, quotes paired.
	if bytes.IndexByte(obj, '\\') >= 0 || bytes.IndexByte(obj, '{') >= 0 || bytes.Count(obj, []byte{'"'})%2 != 0 {
		return "", false
	}
	j := bytes.Index(obj, eidKey)
	if j < 0 {
		if bytes.Contains(obj, []byte(`"eid"`)) {
			return "", false // "eid" : ..., or not a string
		}
		return "", true
	}
	if j > 0 && obj[j-1] != ',' {
		return "", false // inside a value
	}
	v := obj[j+len(eidKey):]
	k := bytes.IndexByte(v, '"')
	if k < 0 {
		return "", false
	}
	return string(v[:k]), true
}

// StoredEvent is one status event as the status stream holds it.
type StoredEvent struct {
	Subject  string
	Action   string // the subject's action token
	Sequence uint64 // in the status stream: a later event has a higher one
	Data     []byte // the event, as published
}

// DeviceEvents are what the status stream holds of one device: the newest
// event per action, and the newest of all.
type DeviceEvents struct {
	Latest  StoredEvent
	Actions map[string]StoredEvent
}

// ErrNoStatusStream reports that the services have not created the status
// stream yet.
var ErrNoStatusStream = errors.New("stream " + StatusStream + " does not exist")

// LookupDevice reads the status events of the device named id, an ICCID or
// an EID, and returns the newest per action and the newest of all; nil
// when the device has no event.
//
// The events counted are those filed under id (its subjects
// thingspace.profile.status.*.<id>) and, through the EID index, those that
// named id as their EID under another subject id (each profile's ICCID of
// an eUICC). On such a subject an event that does not name the EID (a
// suspend by ICCID alone, say) is not one of the EID's: the newest event
// of that subject that does is taken instead. Without the index bucket (a
// deployment whose ingest predates it) only the subjects of id are read.
func LookupDevice(ctx context.Context, js jetstream.JetStream, id string) (*DeviceEvents, error) {
	st, err := js.Stream(ctx, StatusStream)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil, ErrNoStatusStream
	}
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", StatusStream, err)
	}
	own := status.Token(id)
	ids := []string{own}
	indexed, err := eidIndexIDs(ctx, js, id)
	if err != nil {
		return nil, err
	}
	for _, k := range indexed {
		if k != own {
			ids = append(ids, k)
		}
	}

	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		first error
		found []StoredEvent
	)
	fail := func(err error) {
		mu.Lock()
		if first == nil {
			first = err
		}
		mu.Unlock()
	}
	for _, k := range ids {
		wg.Go(func() {
			info, err := st.Info(ctx, jetstream.WithSubjectFilter(status.DeviceSubjects(k)))
			if err != nil {
				fail(fmt.Errorf("reading %s: %w", StatusStream, err))
				return
			}
			var sub sync.WaitGroup
			for subject, count := range info.State.Subjects {
				sub.Go(func() {
					ev, ok, err := newestNaming(ctx, st, subject, count, id, k == own)
					if err != nil {
						fail(err)
						return
					}
					if ok {
						mu.Lock()
						found = append(found, ev)
						mu.Unlock()
					}
				})
			}
			sub.Wait()
		})
	}
	wg.Wait()
	if first != nil {
		return nil, first
	}
	if len(found) == 0 {
		return nil, nil
	}
	d := &DeviceEvents{Actions: make(map[string]StoredEvent)}
	for _, ev := range found {
		if cur, ok := d.Actions[ev.Action]; !ok || ev.Sequence > cur.Sequence {
			d.Actions[ev.Action] = ev
		}
		if ev.Sequence > d.Latest.Sequence {
			d.Latest = ev
		}
	}
	return d, nil
}

// eidIndexIDs lists the subject ids the index holds under eid: one stream
// info of the bucket's stream, filtered to the EID's keys.
func eidIndexIDs(ctx context.Context, js jetstream.JetStream, eid string) ([]string, error) {
	if !keyToken(eid) {
		return nil, nil
	}
	kv, err := js.Stream(ctx, "KV_"+EIDBucket)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("EID index %s: %w", EIDBucket, err)
	}
	prefix := EIDIndexSubject(eid) + "."
	info, err := kv.Info(ctx, jetstream.WithSubjectFilter(prefix+">"))
	if err != nil {
		return nil, fmt.Errorf("EID index %s: %w", EIDBucket, err)
	}
	ids := make([]string, 0, len(info.State.Subjects))
	for subject := range info.State.Subjects {
		if k, ok := strings.CutPrefix(subject, prefix); ok && keyToken(k) {
			ids = append(ids, k)
		}
	}
	return ids, nil
}

// newestNaming returns the newest event on subject that is one of the
// device's: any event when the subject is filed under the device's own id
// (all is true), else one whose device names eid. count is how many
// messages the subject holds.
func newestNaming(ctx context.Context, st jetstream.Stream, subject string, count uint64, eid string, all bool) (StoredEvent, bool, error) {
	stored := func(subject string, seq uint64, data []byte) StoredEvent {
		return StoredEvent{Subject: subject, Action: actionOf(subject), Sequence: seq, Data: data}
	}
	last, err := st.GetLastMsgForSubject(ctx, subject)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return StoredEvent{}, false, nil // aged out since the info
	}
	if err != nil {
		return StoredEvent{}, false, fmt.Errorf("reading %s: %w", StatusStream, err)
	}
	if all || EventEID(last.Data) == eid {
		return stored(last.Subject, last.Sequence, last.Data), true, nil
	}
	if count <= 1 {
		return StoredEvent{}, false, nil
	}
	// The subject's newest event names another EID or none: read the
	// subject from its start for the newest that names this one. Rare (an
	// ICCID-only action on a profile), and one device's history is short.
	cons, err := st.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{FilterSubjects: []string{subject}})
	if err != nil {
		return StoredEvent{}, false, fmt.Errorf("reading %s: %w", StatusStream, err)
	}
	var best StoredEvent
	ok := false
	for {
		batch, err := cons.Fetch(int(min(count, 1000)), jetstream.FetchContext(ctx))
		if err != nil {
			return StoredEvent{}, false, fmt.Errorf("reading %s: %w", StatusStream, err)
		}
		n := 0
		for msg := range batch.Messages() {
			n++
			meta, err := msg.Metadata()
			if err != nil {
				return StoredEvent{}, false, fmt.Errorf("reading %s: %w", StatusStream, err)
			}
			if meta.Sequence.Stream >= last.Sequence {
				return best, ok, nil
			}
			if EventEID(msg.Data()) == eid {
				best, ok = stored(msg.Subject(), meta.Sequence.Stream, msg.Data()), true
			}
			if meta.NumPending == 0 {
				return best, ok, nil
			}
		}
		if err := batch.Error(); err != nil {
			return StoredEvent{}, false, fmt.Errorf("reading %s: %w", StatusStream, err)
		}
		if n == 0 {
			return best, ok, nil
		}
	}
}

// actionOf is the action token of a status subject.
func actionOf(subject string) string {
	rest, ok := strings.CutPrefix(subject, status.SubjectPrefix+".")
	if !ok {
		return ""
	}
	action, _, _ := strings.Cut(rest, ".")
	return action
}
