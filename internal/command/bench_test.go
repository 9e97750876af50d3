package command_test

import (
	"encoding/json"
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/esim-pipeline/thingspace-esim/internal/command"
	"github.com/esim-pipeline/thingspace-esim/internal/device"
)

// body builds an enable command of n distinct, well-formed devices.
func body(tb testing.TB, n int) []byte {
	tb.Helper()
	type id struct {
		Kind string `json:"kind"`
		ID   string `json:"id"`
	}
	type dev struct {
		DeviceIDs []id `json:"deviceIds"`
	}
	devs := make([]dev, n)
	for i := range devs {
		devs[i] = dev{DeviceIDs: []id{
			{Kind: "eid", ID: fmt.Sprintf("890490320000000000000000%08d", i)},
			{Kind: "iccid", ID: fmt.Sprintf("891480000008%08d", i)},
		}}
	}
	b, err := json.Marshal(map[string]any{
		"devices":     devs,
		"accountName": "0000123456-00001",
		"smsrOid":     "1.3.6.1.4.1.31746.1.500.200.101.5",
	})
	require.NoError(tb, err)
	return b
}

func BenchmarkDecode(b *testing.B) {
	for _, n := range []int{1, 10000} {
		b.Run(fmt.Sprintf("%d_devices", n), func(b *testing.B) {
			in := body(b, n)
			b.SetBytes(int64(len(in)))
			b.ReportAllocs()
			for b.Loop() {
				c, err := command.Decode(command.Enable, in, device.Options{Checksums: false})
				if err != nil || len(c.Devices) != n {
					b.Fatalf("decode: %v, %d devices", err, len(c.Devices))
				}
			}
		})
	}
}
