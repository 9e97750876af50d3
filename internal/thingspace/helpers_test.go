package thingspace_test

import (
	"net/http/httptest"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"github.com/stretchr/testify/require"

	"github.com/esim-pipeline/thingspace-esim/internal/simulator"
	"github.com/esim-pipeline/thingspace-esim/internal/testkit"
	"github.com/esim-pipeline/thingspace-esim/internal/thingspace"
)

const (
	account = "0000123456-00001"
	smsrOid = "1.3.6.1.4.1.31746.1.500.200.101.5"
	eid     = "666456789123456789123456784008"
	iccid   = "89148000000840784259"
	imei    = "666456789014008"
)

// env is a simulator behind a real HTTP listener and a client of it.
type env struct {
	sim    *simulator.Server
	srv    *httptest.Server
	client *thingspace.Client
	logs   *testkit.SyncBuffer
}

func newEnv(t *testing.T, sc simulator.Config, tweak func(*thingspace.Config)) *env {
	t.Helper()
	sc.Seed = 1
	sim, err := simulator.New(sc)
	require.NoError(t, err)
	sim.Start()
	srv := httptest.NewServer(sim.Handler())
	t.Cleanup(srv.Close)
	t.Cleanup(sim.Close)
	logs := &testkit.SyncBuffer{}
	cfg := thingspace.Config{
		BaseURL:      srv.URL,
		ClientID:     simulator.DemoClientID,
		ClientSecret: simulator.DemoClientSecret,
		Username:     simulator.DemoUsername,
		Password:     simulator.DemoPassword,
		Timeout:      5 * time.Second,
		Logger:       zerolog.New(logs).Level(zerolog.DebugLevel),
	}
	if tweak != nil {
		tweak(&cfg)
	}
	c, err := thingspace.New(cfg)
	require.NoError(t, err)
	return &env{sim: sim, srv: srv, client: c, logs: logs}
}

// demoClient is a client with the simulator's demo credentials for a
// server at baseURL (a simulator behind a test's own handler).
func demoClient(t *testing.T, baseURL string) *thingspace.Client {
	t.Helper()
	c, err := thingspace.New(thingspace.Config{BaseURL: baseURL, ClientID: simulator.DemoClientID,
		ClientSecret: simulator.DemoClientSecret, Username: simulator.DemoUsername, Password: simulator.DemoPassword})
	require.NoError(t, err)
	return c
}

func enableRequest(ids ...string) thingspace.ProfileRequest {
	req := thingspace.ProfileRequest{AccountName: account, SmsrOid: smsrOid}
	for i := 0; i+1 < len(ids); i += 2 {
		req.Devices = append(req.Devices, thingspace.Device{DeviceIDs: []thingspace.DeviceID{
			{Kind: "eid", ID: ids[i]}, {Kind: "iccid", ID: ids[i+1]}}})
	}
	if len(ids) == 0 {
		req.Devices = []thingspace.Device{{DeviceIDs: []thingspace.DeviceID{{Kind: "eid", ID: eid}, {Kind: "iccid", ID: iccid}}}}
	}
	return req
}

// lastCall returns the last recorded call to path.
func lastCall(t *testing.T, sim *simulator.Server, path string) simulator.Call {
	t.Helper()
	calls := sim.Calls()
	for i := len(calls) - 1; i >= 0; i-- {
		if calls[i].Path == path {
			return calls[i]
		}
	}
	require.Failf(t, "no call", "no call to %s among %d", path, len(calls))
	return simulator.Call{}
}
