package main_test

import (
	"errors"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// The binary hands esimctl.Run's code to the shell: 2 for bad usage, with
// the message on stderr; 0 for --help, on stdout.
func TestTheBinaryExitsWithRunsCode(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	bin := filepath.Join(t.TempDir(), "esimctl")
	build := exec.Command("go", "build", "-o", bin, ".")
	out, err := build.CombinedOutput()
	require.NoError(t, err, "%s", out)

	cmd := exec.Command(bin, "submit", "--action", "enable", "--account", "0000123456-00001",
		"--smsr-oid", "1.3.6.1.4.1.31746.1.500.200.101.5", filepath.Join(t.TempDir(), "missing.csv"))
	stderr, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	require.True(t, errors.As(err, &exit), "%v", err)
	require.Equal(t, 2, exit.ExitCode())
	require.Contains(t, string(stderr), "missing.csv: cannot read the devices file: no such file")

	help, err := exec.Command(bin, "--help").Output()
	require.NoError(t, err)
	require.Contains(t, string(help), "esimctl submit")
}
