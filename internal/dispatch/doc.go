// Package dispatch is the dispatcher: it takes profile-action commands from
// the command stream, validates them per device, merges and splits them into
// ThingSpace bulk calls within the rate limit, records which requestId
// carries which commands, publishes `accepted` and `rejected` events, and
// acknowledges a command only once its outcome is durable.
//
// The flow, one command message:
//
//	intake (pull consumer) -> decode/validate -> rejected events for bad devices
//	                       -> batcher (per action, account, options)
//	sender (one goroutine) -> rate token -> ThingSpace call (retry, bisect on 400)
//	                       -> requestId record -> accepted events -> ack
//
// One device's commands leave in publish order: the batcher seals a batch
// when a device in it is asked for under another key, the sender makes one
// call at a time, and a command handed back for a later delivery fences its
// devices until it is sent again (order.go).
//
// It is an application package: it may import models, adapters and leaves,
// never cmd or the callback package. The interfaces it needs of ThingSpace
// are declared here.
package dispatch
