// Package esimctl is the operator CLI behind cmd/esimctl: it turns a CSV of
// SIMs into commands on thingspace.profile.commands.<action>, records each run
// in the KV bucket esimctl_runs so that the same file submitted again resumes
// the same run, follows the run's status events on THINGSPACE_STATUS and
// writes one results row per input row.
//
// Verbs: submit, watch, status (an ICCID or an EID, read with
// broker.LookupDevice), deadletters list, show and replay (each dead letter
// replayed once, by the rule of broker.ReplayMsg) (see [Run]). Whatever the exit code other than 0,
// stderr says why. Exit codes: 0 every device
// succeeded, 1 some did not (or the run could not be followed), 2 bad usage
// or a bad file (nothing published), 130 interrupted (the work goes on).
//
// It is an adapter-level package: it imports models (command, device,
// status), broker and config, never the services (dispatch, callback).
package esimctl
