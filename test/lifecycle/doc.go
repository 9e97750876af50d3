// Package lifecycle holds the end-to-end tests of the actions that complete
// the eSIM lifecycle (resume, device_suspend, device_resume,
// download_enable, download_disable): each through the whole pipeline
// (embedded NATS, the simulator over HTTP, the dispatcher, the ingest), as
// the contract states them: the exact body ThingSpace receives, the events
// on their subjects, per-device order across actions.
package lifecycle
