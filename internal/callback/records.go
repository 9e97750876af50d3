package callback

import (
	"container/list"
	"context"
	"errors"
	"sync"
	"time"

	"github.com/esim-pipeline/thingspace-esim/internal/correlation"
)

// RecordSource reads requestId records; *correlation.Store is one.
type RecordSource interface {
	Get(ctx context.Context, requestID string) (*correlation.Record, error)
}

// records is a read-through cache of requestId records: up to size records
// in LRU order (the 10,000 callbacks of one request share one record), one
// read in flight per requestId, and a short memory of misses so that the
// callbacks of a request that beat its record do not each ask the bucket.
type records struct {
	src     RecordSource
	size    int
	missTTL time.Duration
	now     func() time.Time

	mu       sync.Mutex
	order    *list.List // of *cached, front = most recent
	byID     map[string]*list.Element
	misses   map[string]time.Time // requestId -> miss remembered until
	inflight map[string]*recordCall
}

type cached struct {
	id  string
	rec *correlation.Record
}

type recordCall struct {
	done chan struct{}
	rec  *correlation.Record
	err  error
}

const maxMisses = 65536

func newRecords(src RecordSource, size int, missTTL time.Duration) *records {
	return &records{
		src: src, size: size, missTTL: missTTL, now: time.Now,
		order:    list.New(),
		byID:     make(map[string]*list.Element, size),
		misses:   make(map[string]time.Time),
		inflight: make(map[string]*recordCall),
	}
}

// Get returns the record of requestID, or an error wrapping
// correlation.ErrNotFound. fresh skips the memory of misses: the last look
// before giving up waiting must ask the bucket. A record not yet marked
// Published is returned and not kept.
func (r *records) Get(ctx context.Context, requestID string, fresh bool) (*correlation.Record, error) {
	r.mu.Lock()
	if el, ok := r.byID[requestID]; ok {
		r.order.MoveToFront(el)
		rec := el.Value.(*cached).rec
		r.mu.Unlock()
		return rec, nil
	}
	if until, ok := r.misses[requestID]; ok && !fresh {
		if r.now().Before(until) {
			r.mu.Unlock()
			return nil, correlation.ErrNotFound
		}
		delete(r.misses, requestID)
	}
	if c, ok := r.inflight[requestID]; ok {
		r.mu.Unlock()
		select {
		case <-c.done:
			return c.rec, c.err
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	c := &recordCall{done: make(chan struct{})}
	r.inflight[requestID] = c
	r.mu.Unlock()

	c.rec, c.err = r.src.Get(ctx, requestID)

	r.mu.Lock()
	delete(r.inflight, requestID)
	switch {
	case c.err == nil && c.rec.Published:
		r.add(requestID, c.rec)
	case c.err == nil:
		// The dispatcher is still storing its accepted events: the next
		// look asks the bucket again.
	case errors.Is(c.err, correlation.ErrNotFound) && r.missTTL > 0:
		if len(r.misses) >= maxMisses {
			clear(r.misses)
		}
		r.misses[requestID] = r.now().Add(r.missTTL)
	}
	r.mu.Unlock()
	close(c.done)
	return c.rec, c.err
}

func (r *records) add(requestID string, rec *correlation.Record) {
	delete(r.misses, requestID)
	if el, ok := r.byID[requestID]; ok {
		el.Value.(*cached).rec = rec
		r.order.MoveToFront(el)
		return
	}
	r.byID[requestID] = r.order.PushFront(&cached{id: requestID, rec: rec})
	for r.order.Len() > r.size {
		old := r.order.Back()
		r.order.Remove(old)
		delete(r.byID, old.Value.(*cached).id)
	}
}
