package esimctl_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/esim-pipeline/thingspace-esim/internal/command"
	"github.com/esim-pipeline/thingspace-esim/internal/device"
	"github.com/esim-pipeline/thingspace-esim/internal/esimctl"
)

func TestTheCSVIsReadByItsHeaderInAnyCaseAndOrder(t *testing.T) {
	tests := []struct {
		name    string
		file    string
		columns []device.Kind
		rows    []esimctl.Row
	}{
		{"lower case", "iccid,eid\n" + iccid(1) + "," + eid(1) + "\n",
			[]device.Kind{device.ICCID, device.EID}, []esimctl.Row{{Line: 2, ICCID: iccid(1), EID: eid(1)}}},
		{"any case, other columns ignored, cells trimmed", "Name, EID ,ICCID,IMEI\ntruck, " + eid(1) + " ,  " + iccid(1) + " ,356938035643809\n",
			[]device.Kind{device.ICCID, device.EID, device.IMEI}, []esimctl.Row{{Line: 2, ICCID: iccid(1), EID: eid(1), IMEI: "356938035643809"}}},
		{"a byte order mark and CRLF", "\xef\xbb\xbfICCID\r\n" + iccid(1) + "\r\n" + iccid(2) + "\r\n",
			[]device.Kind{device.ICCID}, []esimctl.Row{{Line: 2, ICCID: iccid(1)}, {Line: 3, ICCID: iccid(2)}}},
		{"semicolons", "iccid;eid\n" + iccid(1) + ";" + eid(1) + "\n",
			[]device.Kind{device.ICCID, device.EID}, []esimctl.Row{{Line: 2, ICCID: iccid(1), EID: eid(1)}}},
		{"empty lines and empty rows skipped, line numbers kept", "iccid,eid\n\n" + iccid(1) + "," + eid(1) + "\n,\n" + iccid(2) + ",\n",
			[]device.Kind{device.ICCID, device.EID}, []esimctl.Row{{Line: 3, ICCID: iccid(1), EID: eid(1)}, {Line: 5, ICCID: iccid(2)}}},
		{"short rows", "eid,iccid\n" + eid(1) + "\n",
			[]device.Kind{device.ICCID, device.EID}, []esimctl.Row{{Line: 2, EID: eid(1)}}},
		{"a bad identifier is left for the pipeline to reject", "iccid\n8914800000ABCDEF0016\n",
			[]device.Kind{device.ICCID}, []esimctl.Row{{Line: 2, ICCID: "8914800000ABCDEF0016"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in, err := esimctl.ParseCSV("d.csv", []byte(tt.file))
			require.NoError(t, err)
			require.Equal(t, tt.columns, in.Columns)
			require.Equal(t, tt.rows, in.Rows)
		})
	}
}

func TestABadFileNamesItsLine(t *testing.T) {
	long := strings.Repeat("8", 65)
	tests := []struct {
		name, file, want string
	}{
		{"empty", "", "d.csv: the file is empty"},
		{"only white space", " \n\n", "d.csv: the file is empty"},
		{"only a header", "iccid,eid\n", "d.csv: no devices after the header row"},
		{"no id column", "msisdn,name\n1,2\n", `d.csv: line 1: the header names no iccid, eid or imei column (it has "msisdn", "name")`},
		{"no header", iccid(1) + "\n" + iccid(2) + "\n", `d.csv: line 1: the header names no iccid, eid or imei column (it has "` + iccid(1) + `")`},
		{"a column twice", "iccid,ICCID\n1,2\n", "d.csv: line 1: the header names iccid twice (columns 1 and 2)"},
		{"a row with ids empty", "iccid,eid,name\n" + iccid(1) + "," + eid(1) + ",a\n,,b\n", "d.csv: line 3: names no device: the iccid and eid cells are empty"},
		{"an over-long value", "iccid\n" + long + "\n", "d.csv: line 2: iccid has 65 characters"},
		{"a broken quote", "iccid\n" + iccid(1) + "\n\"" + iccid(2) + "\n", "d.csv: line 3: not valid CSV"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := esimctl.ParseCSV("d.csv", []byte(tt.file))
			require.Error(t, err)
			var fe *esimctl.FileError
			require.ErrorAs(t, err, &fe)
			require.Contains(t, err.Error(), tt.want)
		})
	}
}

func TestScientificNotationIsWarnedAbout(t *testing.T) {
	in, err := esimctl.ParseCSV("d.csv", []byte("iccid\n8.91480E+19\n"))
	require.NoError(t, err)
	require.Len(t, in.Warnings, 1)
	require.Contains(t, in.Warnings[0], "line 2: iccid \"8.91480E+19\" looks like a spreadsheet number in scientific notation")
}

func enableSpec() esimctl.Spec {
	return esimctl.Spec{Action: command.Enable, AccountName: account, Options: command.Options{SmsrOid: smsrOid}}
}

func TestTheRunIDDependsOnTheFileTheActionTheAccountAndTheOptions(t *testing.T) {
	content := []byte("iccid,eid\n" + iccid(1) + "," + eid(1) + "\n")
	base := esimctl.RunID(enableSpec(), content)
	require.Len(t, base, 16)
	require.Equal(t, base, esimctl.RunID(enableSpec(), append([]byte(nil), content...)), "stable")
	yes := true
	others := []struct {
		name    string
		spec    esimctl.Spec
		content []byte
	}{
		{"content", enableSpec(), append(append([]byte(nil), content...), '\n')},
		{"action", esimctl.Spec{Action: command.Disable, AccountName: account, Options: command.Options{SmsrOid: smsrOid}}, content},
		{"account", esimctl.Spec{Action: command.Enable, AccountName: "0000123456-00002", Options: command.Options{SmsrOid: smsrOid}}, content},
		{"options", esimctl.Spec{Action: command.Enable, AccountName: account, Options: command.Options{SmsrOid: smsrOid + ".1"}}, content},
		{"etfWaiver", esimctl.Spec{Action: command.Deactivate, AccountName: account, Options: command.Options{EtfWaiver: &yes}}, content},
	}
	seen := map[string]string{base: "base"}
	for _, o := range others {
		id := esimctl.RunID(o.spec, o.content)
		require.NotContains(t, seen, id, "%s changes the run id", o.name)
		seen[id] = o.name
	}
}

// Each chunk is a command the pipeline's own decoder takes whole: at most
// 1,000 devices, only the kinds the action takes, the run's commandId.
func TestChunksAreCommandsThePipelineAccepts(t *testing.T) {
	tests := []struct {
		name   string
		spec   esimctl.Spec
		kinds  []device.Kind
		chunks []int
	}{
		{"enable sends eid and iccid, not imei", enableSpec(), []device.Kind{device.EID, device.ICCID}, []int{1000, 1000, 500}},
		{"deactivate sends imei too", esimctl.Spec{Action: command.Deactivate, AccountName: account, Options: command.Options{ReasonCode: "FF"}},
			[]device.Kind{device.EID, device.ICCID, device.IMEI}, []int{1000, 1000, 500}},
		{"suspend sends iccid only", esimctl.Spec{Action: command.Suspend, AccountName: account, Options: command.Options{ServicePlan: "plan"}},
			[]device.Kind{device.ICCID}, []int{1000, 1000, 500}},
	}
	var rows []esimctl.Row
	for i := range 2500 {
		rows = append(rows, esimctl.Row{Line: i + 2, ICCID: iccid(i), EID: eid(i), IMEI: fmt.Sprintf("35693803%07d", i)})
	}
	columns := []device.Kind{device.ICCID, device.EID, device.IMEI}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			require.NoError(t, tt.spec.Check())
			p, err := esimctl.NewPlan("0123456789abcdef", tt.spec, columns, rows, "d.csv")
			require.NoError(t, err)
			require.Equal(t, len(tt.chunks), p.Chunks())
			next := 0
			for n, size := range tt.chunks {
				body, err := p.Body(n)
				require.NoError(t, err)
				c, err := command.Decode(tt.spec.Action, body, device.Options{})
				require.NoError(t, err)
				require.NoError(t, c.Err)
				require.Empty(t, c.Problems)
				require.Len(t, c.Devices, size)
				require.Equal(t, fmt.Sprintf("esimctl-0123456789abcdef-%04d", n), c.ID)
				require.Equal(t, c.ID, p.CommandID(n))
				require.Equal(t, account, c.AccountName)
				require.Equal(t, tt.spec.Options.Key(), c.Options.Key())
				for _, d := range c.Devices {
					want := device.Set{}
					for _, k := range tt.kinds {
						want = want.With(k, map[device.Kind]string{device.ICCID: rows[next].ICCID, device.EID: rows[next].EID, device.IMEI: rows[next].IMEI}[k])
					}
					require.Equal(t, want, d.IDs, "device %d, in input order", next)
					next++
				}
			}
			require.Equal(t, len(rows), next)
		})
	}
}

func TestAPlanNeedsTheColumnsTheActionNeeds(t *testing.T) {
	rows := []esimctl.Row{{Line: 2, ICCID: iccid(1)}}
	_, err := esimctl.NewPlan("r", enableSpec(), []device.Kind{device.ICCID}, rows, "d.csv")
	require.EqualError(t, err, "d.csv: line 1: enable needs eid and iccid for every device; the header has no eid column (it has iccid)")

	suspend := esimctl.Spec{Action: command.Suspend, AccountName: account}
	_, err = esimctl.NewPlan("r", suspend, []device.Kind{device.EID}, []esimctl.Row{{Line: 2, EID: eid(1)}}, "d.csv")
	require.EqualError(t, err, "d.csv: line 1: suspend needs iccid for every device; the header has no iccid column (it has eid)")

	_, err = esimctl.NewPlan("r", suspend, []device.Kind{device.ICCID, device.EID},
		[]esimctl.Row{{Line: 2, ICCID: iccid(1)}, {Line: 3, EID: eid(1)}}, "d.csv")
	require.EqualError(t, err, "d.csv: line 3: names no iccid, and suspend takes nothing else")

	p, err := esimctl.NewPlan("r", enableSpec(), []device.Kind{device.ICCID, device.EID},
		[]esimctl.Row{{Line: 2, ICCID: iccid(1), EID: eid(1)}, {Line: 3, EID: eid(2)}, {Line: 4, ICCID: iccid(1), EID: eid(1)}}, "d.csv")
	require.NoError(t, err, "an empty required cell is the pipeline's to reject, per device")
	require.Len(t, p.Devices, 2)
	require.Equal(t, []int{0, 1, 0}, p.RowDevice)
	require.Equal(t, 1, p.Repeats())
}

func TestASpecIsCheckedAgainstItsAction(t *testing.T) {
	no := false
	tests := []struct {
		name string
		spec esimctl.Spec
		want string // "" for valid
	}{
		{"enable with an smsrOid", enableSpec(), ""},
		{"deactivate with every option", esimctl.Spec{Action: command.Deactivate, AccountName: account, Options: command.Options{ServicePlan: "p", EtfWaiver: &no, ReasonCode: "FF"}}, ""},
		{"suspend with a service plan", esimctl.Spec{Action: command.Suspend, AccountName: account, Options: command.Options{ServicePlan: "p"}}, ""},
		{"no account", esimctl.Spec{Action: command.Suspend}, "--account is required"},
		{"delete without smsrOid", esimctl.Spec{Action: command.Delete, AccountName: account}, "delete needs --smsr-oid"},
		{"enable with a service plan", esimctl.Spec{Action: command.Enable, AccountName: account, Options: command.Options{SmsrOid: smsrOid, ServicePlan: "p"}}, "enable does not take --service-plan"},
		{"suspend with a waiver", esimctl.Spec{Action: command.Suspend, AccountName: account, Options: command.Options{EtfWaiver: &no}}, "suspend does not take --etf-waiver"},
		{"suspend with a reason", esimctl.Spec{Action: command.Suspend, AccountName: account, Options: command.Options{ReasonCode: "FF"}}, "suspend does not take --reason-code"},
		{"a reason code of 1 character", esimctl.Spec{Action: command.Deactivate, AccountName: account, Options: command.Options{ReasonCode: "F"}}, `--reason-code "F" must be 2 characters`},
		{"a malformed smsrOid", esimctl.Spec{Action: command.Enable, AccountName: account, Options: command.Options{SmsrOid: "x"}}, `smsrOid "x" is not a dotted object identifier`},
		{"an unknown action", esimctl.Spec{Action: "activate", AccountName: account}, `--action "activate" is not an action`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.spec.Check()
			if tt.want == "" {
				require.NoError(t, err)
				return
			}
			var ue *esimctl.UsageError
			require.ErrorAs(t, err, &ue)
			require.Contains(t, err.Error(), tt.want)
		})
	}
}
