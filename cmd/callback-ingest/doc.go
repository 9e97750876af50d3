// Command callback-ingest receives ThingSpace's DeviceProfileResponse
// callbacks on POST /callbacks, stores each in JetStream before answering,
// and turns each into one per-device status event. Settings come from the
// environment or flags (--help lists them).
//
// It only parses its settings and calls internal/callback; nothing imports it.
package main
