package device_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/esim-pipeline/thingspace-esim/internal/device"
)

// Numbers crafted to pass their check digit: Luhn for ICCID and IMEI, ISO
// 7064 MOD 97-10 for EID (the 32-digit number is 1 modulo 97).
const (
	goodEID     = "89049032000000000000000000001230"
	goodICCID20 = "89148000000840784251"
	goodICCID19 = "8914800000084078423"
	goodIMEI    = "490154203237518"
)

func TestParseKindReadsAnyCase(t *testing.T) {
	tests := []struct {
		in   string
		want device.Kind
	}{
		{"eid", device.EID}, {"EID", device.EID}, {"Eid", device.EID},
		{"iccid", device.ICCID}, {"ICCID", device.ICCID}, {"Iccid", device.ICCID},
		{"imei", device.IMEI}, {"Imei", device.IMEI},
		{"mdn", device.MDN}, {"MDN", device.MDN},
		{"msisdn", device.MSISDN}, {" MsIsDn ", device.MSISDN},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			k, err := device.ParseKind(tt.in)
			require.NoError(t, err)
			require.Equal(t, tt.want, k)
			require.True(t, k.Valid())
		})
	}
}

func TestParseKindNamesTheKnownKinds(t *testing.T) {
	for _, in := range []string{"imsi", "", "iccid2"} {
		_, err := device.ParseKind(in)
		require.ErrorIs(t, err, device.ErrUnknownKind)
		require.EqualError(t, err, `unknown identifier kind "`+in+`" (want one of eid, iccid, imei, mdn, msisdn)`)
	}
}

func TestParseChecksFormats(t *testing.T) {
	tests := []struct {
		name  string
		kind  device.Kind
		value string
		want  string // the value kept, or the exact error
		ok    bool
	}{
		{"a 32-digit EID", device.EID, goodEID, goodEID, true},
		{"the 30-digit sample EID of the API pages", device.EID, "666456789123456789123456784008", "666456789123456789123456784008", true},
		{"a 29-digit EID", device.EID, "66645678912345678912345678400", `invalid identifier: eid "66645678912345678912345678400" has 29 digits, want 32`, false},
		{"a 33-digit EID", device.EID, goodEID + "1", `invalid identifier: eid "` + goodEID + `1" has 33 digits, want 32`, false},
		{"a 20-digit ICCID", device.ICCID, goodICCID20, goodICCID20, true},
		{"a 19-digit ICCID", device.ICCID, goodICCID19, goodICCID19, true},
		{"an ICCID with spaces around", device.ICCID, "  " + goodICCID20 + "\t", goodICCID20, true},
		{"an 18-digit ICCID", device.ICCID, "891480000008407842", `invalid identifier: iccid "891480000008407842" has 18 digits, want 19 or 20`, false},
		{"an ICCID with letters", device.ICCID, "8914800000084078425F", `invalid identifier: iccid "8914800000084078425F" must contain digits only`, false},
		{"an ICCID with a space inside", device.ICCID, "8914800000 084078425", `invalid identifier: iccid "8914800000 084078425" must contain digits only`, false},
		{"an empty ICCID", device.ICCID, " ", `invalid identifier: iccid is empty`, false},
		{"a 15-digit IMEI", device.IMEI, goodIMEI, goodIMEI, true},
		{"a 16-digit IMEISV", device.IMEI, "4901542032375101", "4901542032375101", true},
		{"a 14-digit IMEI", device.IMEI, "49015420323751", `invalid identifier: imei "49015420323751" has 14 digits, want 15 (or 16 for IMEISV)`, false},
		{"a 10-digit MDN", device.MDN, "2022326360", "2022326360", true},
		{"an MDN with a country code", device.MDN, "12022326360", `invalid identifier: mdn "12022326360" has 11 digits, want 10`, false},
		{"an 11-digit MSISDN", device.MSISDN, "12022326360", "12022326360", true},
		{"a 10-digit MSISDN", device.MSISDN, "2022326360", `invalid identifier: msisdn "2022326360" has 10 digits, want 11 to 15`, false},
		{"a placeholder", device.ICCID, "20-digit ICCID", `invalid identifier: iccid "20-digit ICCID" must contain digits only`, false},
		{"non-ASCII digits", device.MDN, "２０２２３２６３６０", `invalid identifier: mdn "２０２２３２６３６０" must contain digits only`, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, err := device.Parse(tt.kind, tt.value, device.Options{})
			if !tt.ok {
				require.ErrorIs(t, err, device.ErrInvalid)
				require.EqualError(t, err, tt.want)
				require.True(t, id.IsZero())
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.kind, id.Kind())
			require.Equal(t, tt.want, id.Value())
			require.Equal(t, string(tt.kind)+":"+tt.want, id.String())
		})
	}
}

func TestParseChecksCheckDigitsOnlyWhenAsked(t *testing.T) {
	tests := []struct {
		name  string
		kind  device.Kind
		value string
		want  string // the error with checksums on; "" when it passes
	}{
		{"a valid EID", device.EID, goodEID, ""},
		{"an EID with one digit changed", device.EID, "89049032000000000000000000001231",
			`invalid identifier: eid "89049032000000000000000000001231" fails the ISO 7064 MOD 97-10 check`},
		{"the sample EID of the API pages", device.EID, "666456789123456789123456784008",
			`invalid identifier: eid "666456789123456789123456784008" fails the ISO 7064 MOD 97-10 check`},
		{"a valid 20-digit ICCID", device.ICCID, goodICCID20, ""},
		{"a valid 19-digit ICCID", device.ICCID, goodICCID19, ""},
		{"an ICCID with a wrong check digit", device.ICCID, "89148000000840784252",
			`invalid identifier: iccid "89148000000840784252" fails the Luhn check`},
		{"the sample ICCID of the API pages", device.ICCID, "89148000000840784259",
			`invalid identifier: iccid "89148000000840784259" fails the Luhn check`},
		{"a valid IMEI", device.IMEI, goodIMEI, ""},
		{"an IMEI with a wrong check digit", device.IMEI, "490154203237519",
			`invalid identifier: imei "490154203237519" fails the Luhn check`},
		{"the sample IMEI of the API pages", device.IMEI, "666456789014008",
			`invalid identifier: imei "666456789014008" fails the Luhn check`},
		{"an IMEISV, which has no check digit", device.IMEI, "4901542032375199", ""},
		{"an MDN, which has no check digit", device.MDN, "2022326369", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := device.Parse(tt.kind, tt.value, device.Options{Checksums: false})
			require.NoError(t, err, "without checksums only the format counts")

			_, err = device.Parse(tt.kind, tt.value, device.Options{Checksums: true})
			if tt.want == "" {
				require.NoError(t, err)
				return
			}
			require.ErrorIs(t, err, device.ErrInvalid)
			require.EqualError(t, err, tt.want)
		})
	}
}

func TestParseRefusesAnUnknownKind(t *testing.T) {
	for _, k := range []device.Kind{"imsi", "ICCID", ""} {
		_, err := device.Parse(k, "", device.Options{})
		require.ErrorIs(t, err, device.ErrUnknownKind)
		require.False(t, k.Valid())
	}
}

func TestASetHoldsOneIdentifierPerKind(t *testing.T) {
	iccid, err := device.Parse(device.ICCID, goodICCID20, device.Options{})
	require.NoError(t, err)
	eid, err := device.Parse(device.EID, goodEID, device.Options{})
	require.NoError(t, err)

	var s device.Set
	require.True(t, s.IsZero())
	require.Equal(t, "unknown", s.Key())
	s = s.Add(eid)
	require.Equal(t, goodEID, s.Key(), "the EID names a device without ICCID")
	s = s.Add(iccid)
	require.Equal(t, goodICCID20, s.Key(), "the ICCID names a device first")
	require.Equal(t, goodEID, s.Get(device.EID))
	require.Equal(t, "", s.Get(device.IMEI))
	require.Equal(t, "eid:"+goodEID+" iccid:"+goodICCID20, s.String())
	require.False(t, s.IsZero())

	for _, k := range device.Kinds {
		require.Equal(t, "x", device.Set{}.With(k, "x").Get(k))
		require.Equal(t, "x", device.Set{}.With(k, "x").Key())
	}
}
