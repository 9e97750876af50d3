package main

import (
	"bytes"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/esim-pipeline/thingspace-esim/internal/command"
	"github.com/esim-pipeline/thingspace-esim/internal/device"
	"github.com/esim-pipeline/thingspace-esim/internal/thingspace"
)

// These check the pure helpers only; the measurements run with `make bench`.

func TestCommandsAreValidSingleDeviceEnables(t *testing.T) {
	for _, i := range []int{1, 199_999, 1_000_000} {
		body := appendCommand(nil, i)
		cmd, err := command.Decode(command.Action("enable"), body, device.Options{})
		require.NoError(t, err, string(body))
		require.Empty(t, cmd.Problems)
		require.Equal(t, 1, cmd.Len())
		require.Equal(t, iccidOf(int64(i)), cmd.Devices[0].IDs.Get(device.ICCID))
	}
}

func TestCallbacksKeepTheSeedShapeWithTheirOwnIdentifiers(t *testing.T) {
	g, err := newCallbackGen(filepath.Join("..", "..", "internal", "thingspace", "testdata", "callback_enable.json"))
	require.NoError(t, err)
	for _, i := range []int64{0, 999, 1000, 1_234_567} {
		body := g.appendBody(nil, i)
		require.Len(t, body, g.bodyLen)
		cb, err := thingspace.ParseCallback(body)
		require.NoError(t, err)
		require.Equal(t, requestID(requestOf(i)), cb.RequestID)
		require.Equal(t, iccidOf(i), cb.Identifiers()["iccid"])
	}
	req := string(g.appendRequest(nil, "127.0.0.1:1", 7))
	require.True(t, strings.HasPrefix(req, "POST /callbacks HTTP/1.1\r\nHost: 127.0.0.1:1\r\n"))
	require.True(t, json.Valid([]byte(req[strings.Index(req, "\r\n\r\n")+4:])))
}

func TestPrometheusLinesAreSummedOverLabels(t *testing.T) {
	m := map[string]float64{}
	for _, l := range []string{
		"# HELP esim_dispatcher_batches_total Batches.",
		`esim_dispatcher_batches_total{action="enable"} 19`,
		`esim_dispatcher_batches_total{action="disable"} 1`,
		"esim_dispatcher_batch_devices_sum 200000",
		"esim_dispatcher_batch_devices_count 20",
		"esim_dispatcher_batches_full_total 19",
	} {
		parseMetricLine(l, m)
	}
	mean, full, batches := batchStats(m)
	require.InDelta(t, 10_000, mean, 0.001)
	require.InDelta(t, 0.95, full, 0.001)
	require.InDelta(t, 20, batches, 0.001)
}

func TestPercentileOfSortedLatencies(t *testing.T) {
	lat := make([]time.Duration, 100)
	for i := range lat {
		lat[i] = time.Duration(i+1) * time.Millisecond
	}
	require.Equal(t, 50*time.Millisecond, percentile(lat, 0.5))
	require.Equal(t, 99*time.Millisecond, percentile(lat, 0.99))
	require.Equal(t, 100*time.Millisecond, percentile(lat, 1))
	require.Zero(t, percentile(nil, 0.99))
}

func TestReportKeepsTheTextOutsideItsMarkers(t *testing.T) {
	first := spliceReport(nil, markStart+"\nv1\n"+markEnd+"\n")
	require.Contains(t, first, "v1")
	edited := first + "\n## Lessons\n\nwritten by hand\n"
	again := spliceReport([]byte(edited), markStart+"\nv2\n"+markEnd+"\n")
	require.NotContains(t, again, "v1")
	require.Contains(t, again, "v2")
	require.True(t, bytes.HasSuffix([]byte(again), []byte("written by hand\n")))
}

func TestCountUsesThousandsSeparators(t *testing.T) {
	require.Equal(t, "1,000,000", count(1_000_000))
	require.Equal(t, "999", count(999))
	require.Equal(t, "-12,345", count(-12345))
}

func TestPerfStatOutputGivesTheSyscallCounts(t *testing.T) {
	out := "# started on Wed Dec  2 14:29:15 2026\n\n" +
		"163,,syscalls:sys_enter_fsync,1133000000,100.00,,\n" +
		"0,,syscalls:sys_enter_fdatasync,1133000000,100.00,,\n" +
		"117,,syscalls:sys_enter_mkdirat,1133000000,100.00,,\n" +
		"79,,syscalls:sys_enter_openat,1133000000,100.00,,\n"
	c := parsePerfStat(out)
	require.True(t, c.ok)
	require.Equal(t, syscallCounts{ok: true, fsync: 163, mkdir: 117, osyncOpen: 79}, c)
	require.False(t, parsePerfStat("<not counted>,,syscalls:sys_enter_fsync,0,0.00,,\n").ok)
}

func TestStoreVariantsAreNamedByKeyInOrder(t *testing.T) {
	vs, err := parseVariants(" atomic-8x1000, sync-64 ,", allStoreVariants)
	require.NoError(t, err)
	require.Len(t, vs, 2)
	require.Equal(t, "atomic-8x1000", vs[0].key)
	require.Equal(t, modeSync, vs[1].mode)
	_, err = parseVariants("atomic-3x7", allStoreVariants)
	require.Error(t, err)
	for _, list := range []string{defaultAtomicVariants, defaultClusterVariants} {
		_, err := parseVariants(list, allStoreVariants)
		require.NoError(t, err, list)
	}
}
