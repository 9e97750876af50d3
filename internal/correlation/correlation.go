package correlation

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/esim-pipeline/thingspace-esim/internal/broker"
	"github.com/esim-pipeline/thingspace-esim/internal/device"
)

// ErrNotFound reports a requestId with no record (never written, or expired).
var ErrNotFound = errors.New("no record for requestId")

// Entry is one device a call carried and the command that asked for it.
type Entry struct {
	CommandID string     `json:"commandId"`
	Device    device.Set `json:"device"`
}

// Record is what one ThingSpace call carried.
type Record struct {
	RequestID   string    `json:"requestId"`
	Action      string    `json:"action"`
	AccountName string    `json:"accountName"`
	SubmittedAt time.Time `json:"submittedAt"`
	Devices     []Entry   `json:"devices"`
	// Published is set once the call's accepted events are stored: a
	// callback's event must come after its device's accepted event, so the
	// ingest waits for it (within its grace) before using the record.
	Published bool `json:"published,omitempty"`

	once  sync.Once
	index map[string]int
}

// Find returns the entry of the device a callback names, matching on any
// identifier both know (ICCID first, then EID, IMEI, MSISDN, MDN).
func (r *Record) Find(ids device.Set) (Entry, bool) {
	r.once.Do(func() {
		r.index = make(map[string]int, len(r.Devices)*2)
		for i, e := range r.Devices {
			for _, k := range device.Kinds {
				if v := e.Device.Get(k); v != "" {
					r.index[string(k)+":"+v] = i
				}
			}
		}
	})
	for _, k := range []device.Kind{device.ICCID, device.EID, device.IMEI, device.MSISDN, device.MDN} {
		if v := ids.Get(k); v != "" {
			if i, ok := r.index[string(k)+":"+v]; ok {
				return r.Devices[i], true
			}
		}
	}
	return Entry{}, false
}

// Store reads and writes records in the request bucket.
type Store struct {
	kv jetstream.KeyValue
}

// Open binds the request bucket, which broker.Ensure created.
func Open(ctx context.Context, js jetstream.JetStream) (*Store, error) {
	kv, err := js.KeyValue(ctx, broker.RequestBucket)
	if err != nil {
		return nil, fmt.Errorf("bucket %s: %w", broker.RequestBucket, err)
	}
	return &Store{kv: kv}, nil
}

// Put stores rec under its requestId and waits for the ack. Values are
// gzipped JSON: a 10,000-device call would not fit in NATS's default 1 MiB
// message otherwise.
func (s *Store) Put(ctx context.Context, rec *Record) error {
	var buf bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&buf, gzip.BestSpeed)
	if err := json.NewEncoder(zw).Encode(rec); err != nil {
		return err
	}
	if err := zw.Close(); err != nil {
		return err
	}
	if _, err := s.kv.Put(ctx, Key(rec.RequestID), buf.Bytes()); err != nil {
		return fmt.Errorf("store record of request %s: %w", rec.RequestID, err)
	}
	return nil
}

// Get reads the record of requestID.
func (s *Store) Get(ctx context.Context, requestID string) (*Record, error) {
	e, err := s.kv.Get(ctx, Key(requestID))
	if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
		return nil, fmt.Errorf("%w %s", ErrNotFound, requestID)
	}
	if err != nil {
		return nil, fmt.Errorf("read record of request %s: %w", requestID, err)
	}
	return Decode(e.Value())
}

// Decode reads a stored record value.
func Decode(v []byte) (*Record, error) {
	zr, err := gzip.NewReader(bytes.NewReader(v))
	if err != nil {
		return nil, fmt.Errorf("record: %w", err)
	}
	b, err := io.ReadAll(zr)
	if err != nil {
		return nil, fmt.Errorf("record: %w", err)
	}
	rec := &Record{}
	if err := json.Unmarshal(b, rec); err != nil {
		return nil, fmt.Errorf("record: %w", err)
	}
	return rec, nil
}

var keyOK = regexp.MustCompile(`^[-_=a-zA-Z0-9]+$`)

// Key is the bucket key of a requestId: the id itself when it is a valid key
// (ThingSpace's are UUIDs), else its hex encoding.
func Key(requestID string) string {
	if keyOK.MatchString(requestID) {
		return requestID
	}
	return "x" + hex.EncodeToString([]byte(requestID))
}
