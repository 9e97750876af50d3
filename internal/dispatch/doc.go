// Package dispatch is the dispatcher: it takes profile-action commands from
// the command stream, validates them per device, merges and splits them into
// ThingSpace bulk calls within the rate limit, records which requestId
// carries which commands, publishes `accepted`, `rejected` and `failed`
// events, and acknowledges a command only once its outcome is durable.
//
// One command message, through the parts of this package:
//
//	intake.go   pull (within the limits) -> decode -> rejected events for bad devices
//	            -> order.Book: which devices may go now -> batcher (per action, account, options)
//	sender.go   one batch at a time -> rate token -> ThingSpace call, retried in place
//	outcome.go  requestId record, deadline, accepted/rejected/failed events, in call order
//	            -> order.Book: settled -> the next devices go, settled commands are acked
//	deadline.go devices with no final callback by CALLBACK_DEADLINE -> request status
//
// Its rules, which make "nothing lost, order kept" hold:
//
//  1. One dispatcher holds the consumer's pin and is the only one that
//     sends; it pulls only while it holds less than its limits (commands
//     and devices), and when it gets the pin it first reads, once, the
//     commands delivered before and not acknowledged, and treats them as
//     earlier commands of their devices that are not here yet.
//  2. A device of a command goes into a batch only when every earlier
//     command naming it has its outcome for it stored (package order).
//  3. A failed call is retried in place with capped backoff while its
//     commands stay held and kept alive; when its tries run out its devices
//     end `failed` and the command is dead-lettered; nothing is handed back
//     while the dispatcher runs.
//  4. At a stop or a lost pin it finishes the call in flight, stores its
//     outcome within SHUTDOWN_GRACE, and hands back the rest in stream order;
//     the consumer redelivers without limit and the dispatcher itself ends a
//     command delivered more than MAX_DELIVER times `failed`, dead-lettered,
//     so a hand-back never loses a command.
//  5. A redelivered device is skipped when the status stream holds an
//     outcome of this command, or of a later one, for it: rule 2 makes that
//     the exact test of "an earlier delivery already settled it".
//
// It is an application package: it may import models, adapters and leaves,
// never cmd or the callback package. The interfaces it needs of ThingSpace
// are declared here.
package dispatch
