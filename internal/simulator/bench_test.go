package simulator_test

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/esim-pipeline/thingspace-esim/internal/simulator"
)

// BenchmarkDelivery pushes 10,000-device requests through callback delivery
// to a listener that answers 200 at once, and reports callbacks per second.
func BenchmarkDelivery(b *testing.B) {
	var got, want atomic.Int64
	done := make(chan struct{}, 1)
	l := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		if got.Add(1) == want.Load() {
			done <- struct{}{}
		}
	}))
	defer l.Close()
	sim, err := simulator.New(simulator.Config{Seed: 1, Faults: simulator.Faults{RatePerMinute: -1}})
	require.NoError(b, err)
	sim.Start()
	defer sim.Close()
	srv := httptest.NewServer(sim.Handler())
	defer srv.Close()
	e := &simEnv{sim: sim, url: srv.URL}
	e.login(b)
	e.register(b, &listener{srv: l}, "u", "p")

	devs := make([][2]string, 10000)
	for i := range devs {
		devs[i] = [2]string{eid, fmt.Sprintf("8914800000%010d", i)}
	}
	body := enableBody(devs...)
	want.Store(int64(b.N) * int64(len(devs)))
	b.ResetTimer()
	start := time.Now()
	for range b.N {
		a := e.call(b, http.MethodPost, "/api/m2m/v1/devices/profile/actions/enable", body, nil)
		if a.status != http.StatusOK {
			b.Fatalf("status %d: %s", a.status, a.raw)
		}
	}
	select {
	case <-done:
	case <-time.After(5 * time.Minute):
		b.Fatalf("%d of %d callbacks arrived", got.Load(), want.Load())
	}
	b.ReportMetric(float64(want.Load())/time.Since(start).Seconds(), "callbacks/s")
}
