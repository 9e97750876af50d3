// Package status owns the per-device status event that the pipeline
// publishes on thingspace.profile.status.<action>.<iccid or eid>: its fields,
// the status vocabulary, which statuses are final, the deterministic eventId
// of one fact, and the subject.
//
// It is a model package: it does no I/O and imports no adapter.
package status
