package esimctl

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/esim-pipeline/thingspace-esim/internal/command"
)

// RunBucket is the KV bucket of runs. Per run id R:
//
//	R.meta       the run: action, account, options, counts, start (JSON Record)
//	R.rows.N     the input rows N*RowsPerPart.. in input order, [iccid, eid, imei] each
//	R.chunk.N    chunk N was published: its stream sequence and time (JSON)
//
// and deadletter.S, dead letter S was replayed (esimctl deadletters replay:
// where to, when; see deadletters.go).
//
// The rows are written before the meta, so a run with a meta has all its rows.
const RunBucket = "esimctl_runs"

// RunTTL keeps a run as long as the status stream keeps its events.
const RunTTL = 30 * 24 * time.Hour

// RowsPerPart bounds one rows value (about 80 bytes a row).
const RowsPerPart = 1000

// Record is a run's meta value.
type Record struct {
	RunID       string    `json:"runId"`
	Action      string    `json:"action"`
	AccountName string    `json:"accountName"`
	SmsrOid     string    `json:"smsrOid,omitempty"`
	ServicePlan string    `json:"servicePlan,omitempty"`
	EtfWaiver   *bool     `json:"etfWaiver,omitempty"`
	ReasonCode  string    `json:"reasonCode,omitempty"`
	File        string    `json:"file"`
	Rows        int       `json:"rows"`
	Devices     int       `json:"devices"`
	Chunks      int       `json:"chunks"`
	RowParts    int       `json:"rowParts"`
	StartedAt   time.Time `json:"startedAt"`
	// StatusStartSeq is the status stream's next sequence when the run
	// started: its events are at or after it (server-side, so no clock skew).
	StatusStartSeq uint64 `json:"statusStartSeq"`
}

// Spec is the record's action, account and options.
func (r *Record) Spec() Spec {
	return Spec{Action: command.Action(r.Action), AccountName: r.AccountName, Options: command.Options{
		SmsrOid: r.SmsrOid, ServicePlan: r.ServicePlan, EtfWaiver: r.EtfWaiver, ReasonCode: r.ReasonCode}}
}

// Published marks one chunk as published.
type Published struct {
	CommandID   string    `json:"commandId"`
	Sequence    uint64    `json:"sequence"`
	Duplicate   bool      `json:"duplicate,omitempty"`
	Devices     int       `json:"devices"`
	PublishedAt time.Time `json:"publishedAt"`
}

func metaKey(run string) string         { return run + ".meta" }
func rowsKey(run string, n int) string  { return run + ".rows." + strconv.Itoa(n) }
func chunkKey(run string, n int) string { return run + ".chunk." + strconv.Itoa(n) }

// Runs is the run store.
type Runs struct{ kv jetstream.KeyValue }

// OpenRuns opens the bucket, creating it (with replicas) when missing. An
// existing bucket is used as it is: its operators may have tuned it.
func OpenRuns(ctx context.Context, js jetstream.JetStream, replicas int) (*Runs, error) {
	kv, err := js.KeyValue(ctx, RunBucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		kv, err = js.CreateKeyValue(ctx, jetstream.KeyValueConfig{
			Bucket:      RunBucket,
			Description: "esimctl runs: what each submitted file asked for, its rows in order, the chunks published",
			TTL:         RunTTL,
			History:     1,
			Replicas:    max(replicas, 1),
		})
		if errors.Is(err, jetstream.ErrBucketExists) {
			kv, err = js.KeyValue(ctx, RunBucket)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("bucket %s: %w", RunBucket, err)
	}
	return &Runs{kv: kv}, nil
}

// ErrNoRun reports a run id with no record.
var ErrNoRun = errors.New("no such run")

// Get reads a run's record.
func (r *Runs) Get(ctx context.Context, run string) (*Record, error) {
	e, err := r.kv.Get(ctx, metaKey(run))
	if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrInvalidKey) {
		return nil, fmt.Errorf("%w %q in bucket %s", ErrNoRun, run, RunBucket)
	}
	if err != nil {
		return nil, fmt.Errorf("run %s: %w", run, err)
	}
	var rec Record
	if err := json.Unmarshal(e.Value(), &rec); err != nil {
		return nil, fmt.Errorf("run %s: unreadable record: %w", run, err)
	}
	return &rec, nil
}

// Create stores a new run: its rows, then its record. It returns the record
// that holds: rec, or the one another submission stored first.
func (r *Runs) Create(ctx context.Context, rec *Record, rows []Row) (*Record, bool, error) {
	rec.RowParts = (len(rows) + RowsPerPart - 1) / RowsPerPart
	for n := 0; n < rec.RowParts; n++ {
		part := rows[n*RowsPerPart : min((n+1)*RowsPerPart, len(rows))]
		cells := make([][3]string, len(part))
		for i, row := range part {
			cells[i] = [3]string{row.ICCID, row.EID, row.IMEI}
		}
		b, err := json.Marshal(cells)
		if err != nil {
			return nil, false, err
		}
		if _, err := r.kv.Put(ctx, rowsKey(rec.RunID, n), b); err != nil {
			return nil, false, fmt.Errorf("run %s: storing rows: %w", rec.RunID, err)
		}
	}
	b, err := json.Marshal(rec)
	if err != nil {
		return nil, false, err
	}
	if _, err := r.kv.Create(ctx, metaKey(rec.RunID), b); err != nil {
		if errors.Is(err, jetstream.ErrKeyExists) {
			got, gerr := r.Get(ctx, rec.RunID)
			return got, false, gerr
		}
		return nil, false, fmt.Errorf("run %s: storing record: %w", rec.RunID, err)
	}
	return rec, true, nil
}

// Rows reads a run's rows back, in input order.
func (r *Runs) Rows(ctx context.Context, rec *Record) ([]Row, error) {
	rows := make([]Row, 0, rec.Rows)
	for n := 0; n < rec.RowParts; n++ {
		e, err := r.kv.Get(ctx, rowsKey(rec.RunID, n))
		if err != nil {
			return nil, fmt.Errorf("run %s: rows part %d: %w", rec.RunID, n, err)
		}
		var cells [][3]string
		if err := json.Unmarshal(e.Value(), &cells); err != nil {
			return nil, fmt.Errorf("run %s: rows part %d: %w", rec.RunID, n, err)
		}
		for _, c := range cells {
			rows = append(rows, Row{ICCID: c[0], EID: c[1], IMEI: c[2]})
		}
	}
	if len(rows) != rec.Rows {
		return nil, fmt.Errorf("run %s: record names %d rows, the bucket holds %d", rec.RunID, rec.Rows, len(rows))
	}
	return rows, nil
}

// Published reports which chunks of the run were published.
func (r *Runs) Published(ctx context.Context, rec *Record) ([]bool, error) {
	done := make([]bool, rec.Chunks)
	for n := range done {
		_, err := r.kv.Get(ctx, chunkKey(rec.RunID, n))
		switch {
		case err == nil:
			done[n] = true
		case errors.Is(err, jetstream.ErrKeyNotFound):
		default:
			return nil, fmt.Errorf("run %s: chunk %d: %w", rec.RunID, n, err)
		}
	}
	return done, nil
}

// MarkPublished records that chunk n was published.
func (r *Runs) MarkPublished(ctx context.Context, run string, n int, p Published) error {
	b, err := json.Marshal(p)
	if err != nil {
		return err
	}
	if _, err := r.kv.Put(ctx, chunkKey(run, n), b); err != nil {
		return fmt.Errorf("run %s: recording chunk %d: %w", run, n, err)
	}
	return nil
}
