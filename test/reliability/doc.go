// Package reliability holds the pipeline's chaos tests: real processes
// (nats-server, dispatcher, callback-ingest) killed with SIGKILL and
// restarted under load, a three-node JetStream cluster losing a stream
// leader, fault storms from the ThingSpace simulator, hostile HTTP requests
// to the ingest, and a scan of every log line and event for secrets.
//
// The tests are heavy (about five minutes on two cores), so they run only
// when RELIABILITY=1 is set: `make test-chaos` sets it, `make test` skips
// them. Nothing here is imported by the pipeline.
package reliability
