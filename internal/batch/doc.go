// Package batch merges devices into ThingSpace calls. It is pure: no I/O,
// time comes from an injected clock, callers lock around it.
//
// A [Batcher] keeps one open batch per [Key] (action, account and call
// options). A batch is sealed when full, or when a device in it is asked for
// under another key: that keeps one device's actions in publish order,
// because batches leave in the order they were sealed and sealed batches
// leave before open ones. An open batch is due once it has waited MaxWait.
//
// It is a model package: it imports only device and the standard library.
package batch
