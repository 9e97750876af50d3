// Command bench measures the pipeline's throughput, latency and memory on
// this machine, each next to a plain-NATS baseline measured in the same run,
// prints one table and writes it to BENCHMARKS.md (`make bench`).
//
// Everything runs on loopback: nats-server, the dispatcher and the
// callback-ingest are separate processes built from this module (go build),
// each started on a fresh store directory; the ThingSpace simulator and the
// load generator run in this process. The baselines that need a process of
// their own (the bare HTTP-to-JetStream handler) and the profiling passes
// re-run this binary in a role (see roles.go).
//
// It is not part of `make test`: the only test here is a fast check of the
// pure helpers. Every wait has a deadline, and the whole run is bounded by
// --deadline.
//
// It may import anything in the module except test-only packages
// (internal/natstest); nothing imports it.
package main
