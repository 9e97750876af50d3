package callback

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The rule that sizes group commits: a store begins at once when none is
// under way, beside one only once half a full batch waits or the first
// callback waited maxWait, and never past maxBatch.

func collectTestCommitter(maxBatch int) *committer {
	c := newCommitter(nil, 4, maxBatch, time.Second, nil, nil)
	c.maxWait = time.Hour // unless a test says otherwise
	return c
}

func queue(c *committer, n int, at time.Time) {
	for range n {
		c.in <- &pending{body: []byte(`{}`), parsed: &parsedCallback{receivedAt: at}}
	}
}

// collected runs collect on its own goroutine and returns its batch.
func collected(c *committer) <-chan []*pending {
	out := make(chan []*pending, 1)
	go func() {
		b, ok := c.collect(context.Background(), nil)
		if ok {
			out <- b
		}
		close(out)
	}()
	return out
}

func TestCollectWithNoStoreUnderWayTakesWhatWaits(t *testing.T) {
	c := collectTestCommitter(64)
	queue(c, 3, time.Now())
	b := <-collected(c)
	assert.Len(t, b, 3)
	assert.EqualValues(t, 1, c.inflight.Load(), "its store counts as under way")
}

func TestCollectBesideAStoreWaitsForHalfABatch(t *testing.T) {
	c := collectTestCommitter(8)
	c.inflight.Store(1)
	queue(c, 3, time.Now())
	out := collected(c)
	select {
	case b := <-out:
		t.Fatalf("a batch of %d began beside a store under way", len(b))
	case <-time.After(50 * time.Millisecond): // a bound on the absence, not a synchronisation
	}
	queue(c, 1, time.Now())
	assert.Len(t, <-out, 4, "half of maxBatch 8")
}

func TestCollectBeginsOnceTheStoreUnderWayEnds(t *testing.T) {
	c := collectTestCommitter(64)
	c.inflight.Store(1)
	queue(c, 2, time.Now())
	out := collected(c)
	c.inflight.Store(0)
	c.idle <- struct{}{}
	assert.Len(t, <-out, 2)
}

func TestCollectBesideAStoreBeginsOnceTheFirstWaitedMaxWait(t *testing.T) {
	c := collectTestCommitter(64)
	c.maxWait = 20 * time.Millisecond
	c.inflight.Store(1)
	start := time.Now()
	queue(c, 2, start)
	b := <-collected(c)
	assert.Len(t, b, 2)
	assert.GreaterOrEqual(t, time.Since(start), c.maxWait)
}

func TestCollectNeverPassesMaxBatch(t *testing.T) {
	c := collectTestCommitter(4)
	queue(c, 6, time.Now())
	require.Len(t, <-collected(c), 4)
	assert.Len(t, c.in, 2, "the rest waits for the next store")
}

// Each pull loop buffers a few stored messages, whatever the consumer's
// ack-pending allowance: a message may carry GROUP_COMMIT_MAX callbacks.
func TestPrefetchStaysSmall(t *testing.T) {
	for _, tc := range []struct{ maxAckPending, workers, want int }{
		{20000, 64, maxPrefetch}, // the defaults: 156 before group commit
		{20000, 1, maxPrefetch},
		{64, 64, 1}, // fewer than two a worker: one
		{300, 64, 2},
	} {
		got := prefetch(Config{MaxAckPending: tc.maxAckPending, Workers: tc.workers})
		assert.Equal(t, tc.want, got, "FANOUT_MAX_ACK_PENDING=%d FANOUT_WORKERS=%d", tc.maxAckPending, tc.workers)
	}
}
