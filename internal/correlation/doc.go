// Package correlation owns the requestId record: which commands and devices
// one ThingSpace call carried. The dispatcher writes it before it publishes
// `accepted` events; callback-ingest and the deadline watcher read it to give
// each callback its commandId. Records live in a JetStream key-value bucket
// with a TTL.
//
// It is an adapter: it imports models (device) and broker names, never the
// application packages or cmd.
package correlation
