package callback_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/esim-pipeline/thingspace-esim/internal/broker"
	"github.com/esim-pipeline/thingspace-esim/internal/callback"
	"github.com/esim-pipeline/thingspace-esim/internal/correlation"
	"github.com/esim-pipeline/thingspace-esim/internal/device"
)

// The target is 16,700 callbacks a second on 2 cores (THINGSPACE.md); these
// run the intake and the fan-out, with the embedded server on the same cores.

func BenchmarkIntake(b *testing.B) {
	s := startStack(b, func(c *callback.Config) { c.CorrelationGrace = time.Hour; c.Storage = benchStorage })
	putBenchRecords(b, s, "req-bench-", b.N+1)
	tr := &http.Transport{MaxIdleConnsPerHost: 256}
	client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	var n atomic.Int64
	b.SetParallelism(16)
	b.ResetTimer()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			i := n.Add(1)
			body := callbackBody(cbOpts{requestID: "req-bench-" + strconv.FormatInt(i/10000, 10), iccid: fmt.Sprintf("8914800000%010d", i)})
			req, _ := http.NewRequest(http.MethodPost, s.url("/callbacks"), bytes.NewReader(body))
			req.SetBasicAuth(testUser, testPass)
			resp, err := client.Do(req)
			if err != nil {
				b.Error(err)
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				b.Errorf("answer %d", resp.StatusCode)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "callbacks/s")
}

func BenchmarkFanout(b *testing.B) {
	s := startStack(b, func(c *callback.Config) { c.CorrelationGrace = time.Hour; c.Storage = benchStorage })
	ctx := context.Background()
	putBenchRecords(b, s, "req-fan-", b.N)
	bodies := make([][]byte, b.N)
	for i := range bodies {
		bodies[i] = callbackBody(cbOpts{requestID: "req-fan-" + strconv.Itoa(i/perRequest), iccid: fmt.Sprintf("8914800000%010d", i)})
	}
	b.ResetTimer()
	start := time.Now()
	for _, body := range bodies {
		_, err := s.js.PublishAsync(broker.CallbackSubject, body)
		require.NoError(b, err)
	}
	<-s.js.PublishAsyncComplete()
	require.Eventually(b, func() bool {
		c, err := s.js.Consumer(ctx, broker.CallbackStream, broker.CallbackFanoutConsumer)
		if err != nil {
			return false
		}
		info, err := c.Info(ctx)
		return err == nil && info.NumPending == 0 && info.NumAckPending == 0
	}, 10*time.Minute, 5*time.Millisecond)
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "callbacks/s")
}

var benchStorage = jetstream.MemoryStorage

const perRequest = 10000

// putBenchRecords writes the records of n devices, 10,000 per requestId
// prefix+i/10000, the device i having ICCID 8914800000<i, 10 digits>.
func putBenchRecords(b *testing.B, s *stack, prefix string, n int) {
	for r := 0; r*perRequest < n; r++ {
		rec := &correlation.Record{RequestID: prefix + strconv.Itoa(r), Action: "enable", AccountName: "0000123456-00001", Published: true}
		for i := r * perRequest; i < (r+1)*perRequest && i < n; i++ {
			rec.Devices = append(rec.Devices, correlation.Entry{CommandID: "cmd", Device: device.Set{ICCID: fmt.Sprintf("8914800000%010d", i)}})
		}
		require.NoError(b, s.store.Put(context.Background(), rec))
	}
}
