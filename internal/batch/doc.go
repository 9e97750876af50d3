// Package batch merges devices into ThingSpace calls. It is pure: no I/O,
// time comes from an injected clock, callers lock around it.
//
// A [Batcher] keeps one open batch per [Key] (action, account and call
// options). A batch is sealed when full; an open batch is due once it has
// waited MaxWait; full batches leave before open ones, oldest first. The
// order of one device's commands is not its concern: the caller adds a
// device only once nothing earlier of it is waiting (package order), so a
// device is in at most one batch at a time.
//
// It is a model package: it imports only device and the standard library.
package batch
