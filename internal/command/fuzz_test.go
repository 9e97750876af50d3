package command_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/esim-pipeline/thingspace-esim/internal/command"
	"github.com/esim-pipeline/thingspace-esim/internal/device"
)

// FuzzDecode holds Decode to its promises on any input: no panic; an error
// only as ErrUndecodable, on one line; otherwise every device in exactly one
// of Devices and Problems, valid devices carrying identifiers that parse,
// problems carrying a code and a one-line message.
func FuzzDecode(f *testing.F) {
	files, err := filepath.Glob("testdata/seeds/*.request.json")
	if err != nil || len(files) == 0 {
		f.Fatalf("seeds: %v", err)
	}
	for _, file := range files {
		b, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		for i := range command.Actions {
			f.Add(uint8(i), b, false)
		}
	}
	f.Add(uint8(0), []byte(enableBody(dev("eid", eid1, "iccid", iccid1), dev("eid", eid1, "iccid", iccid1))), true)
	f.Add(uint8(4), []byte(`{"accountName":"a","devices":[{"deviceIds":[]},7,{"deviceIds":[{"kind":"ICCID","id":"`+iccid1+`"}]}]}`), true)
	f.Add(uint8(3), []byte(`{"accountName":"a","reasonCode":"FFF","etfWaiver":false,"devices":[{"deviceIds":[{"kind":"x","id":1}]}]}`), false)

	f.Fuzz(func(t *testing.T, which uint8, body []byte, checksums bool) {
		action := command.Actions[int(which)%len(command.Actions)]
		c, err := command.Decode(action, body, device.Options{Checksums: checksums})
		if err != nil {
			if c != nil {
				t.Fatalf("a command and an error: %v", err)
			}
			if !errors.Is(err, command.ErrUndecodable) {
				t.Fatalf("an error that is not ErrUndecodable: %v", err)
			}
			if strings.ContainsAny(err.Error(), "\r\n") {
				t.Fatalf("a multi-line error: %q", err)
			}
			return
		}
		if c.Len() == 0 {
			t.Fatal("a command without devices")
		}
		seen := make([]bool, c.Len())
		mark := func(i int) {
			if i < 0 || i >= len(seen) || seen[i] {
				t.Fatalf("device index %d missing or twice", i)
			}
			seen[i] = true
		}
		for _, d := range c.Devices {
			mark(d.Index)
			for _, k := range action.RequiredKinds() {
				if _, err := device.Parse(k, d.IDs.Get(k), device.Options{Checksums: checksums}); err != nil {
					t.Fatalf("a valid device with a bad %s: %v", k, err)
				}
			}
		}
		for _, p := range c.Problems {
			mark(p.Index)
			if p.Code == "" || p.Message == "" || strings.ContainsAny(p.Message, "\r\n") {
				t.Fatalf("a problem without a one-line message: %+v", p)
			}
		}
		if c.Err != nil && len(c.Devices) > 0 {
			t.Fatal("an invalid command with valid devices")
		}
	})
}
