package thingspace_test

import (
	"os"
	"testing"

	"github.com/esim-pipeline/thingspace-esim/internal/thingspace"
)

func BenchmarkParseCallback(b *testing.B) {
	body, err := os.ReadFile("testdata/callback_enable.json")
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := thingspace.ParseCallback(body); err != nil {
			b.Fatal(err)
		}
	}
}
