package main

import (
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestRun(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/healthz" {
			http.Error(w, "down", http.StatusServiceUnavailable)
		}
	}))
	t.Cleanup(srv.Close)

	require.NoError(t, run([]string{srv.URL + "/healthz"}), "a 200 is healthy")
	require.Error(t, run([]string{srv.URL + "/readyz"}), "a 503 is unhealthy")
	require.Error(t, run(nil), "no URL is a usage error")
	srv.Close()
	require.Error(t, run([]string{srv.URL + "/healthz"}), "no listener is unhealthy")
}
