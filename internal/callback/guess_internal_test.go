package callback

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/esim-pipeline/thingspace-esim/internal/status"
	"github.com/esim-pipeline/thingspace-esim/internal/thingspace"
)

// A callback whose requestId has no record names its action only where
// what it reports is that action's own.
func TestGuessActionNamesOnlyWhatACallbackGivesAway(t *testing.T) {
	tests := []struct {
		profileStatus, state, want string
	}{
		{"enable", "Active", "enable"},
		{"disable", "Active", "disable"},
		{"delete", "Active", "delete"},
		{"ENABLE", "DEACTIVE", "deactivate"},
		{"ENABLE", "SUSPENDED", "suspend"},
		{"DOWNLOAD_ENABLE", "Active", "download_enable"},
		{"download_disable", "Active", "download_disable"},
		{"ENABLE", "ACTIVE", status.UnknownAction}, // a resume, or an enable on a Global page: no guess
		{"", "", status.UnknownAction},
	}
	for _, tt := range tests {
		got := guessAction(&thingspace.DeviceProfileResponse{ProfileStatus: tt.profileStatus, State: tt.state})
		require.Equal(t, tt.want, got, "%q/%q", tt.profileStatus, tt.state)
	}
	require.Equal(t, status.UnknownAction, guessAction(nil))
}
