// Package callback is callback-ingest as a library: the public HTTP intake of
// ThingSpace's DeviceProfileResponse callbacks (POST /callbacks), the fan-out
// that turns each stored callback into one per-device status event, and the
// admin listener's device-state endpoint (GET /devices/{id}: an ICCID, or an
// EID through the EID index this package keeps; see eidindex.go).
//
// The flow, and where each promise is kept:
//
//	POST /callbacks ─ auth ─ parse ─┬─ unparseable ─> dead letter, 400
//	                                └─ raw bytes ─> THINGSPACE_CALLBACKS (PubAck) ─> 200
//	THINGSPACE_CALLBACKS ─ durable consumer "callback-fanout" ─ Watermill router
//	    (CorrelationID, metrics, PoisonQueue ─> dead letter, Recoverer)
//	    ─ requestId record (LRU) ─ status event, Nats-Msg-Id = eventId (PubAck) ─ ack
//	THINGSPACE_STATUS (every event, the dispatcher's too) ─ durable consumer
//	    "eid-index" ─ key <eid>.<iccid> in bucket thingspace_eids (PubAck) ─ ack
//
// A callback is answered 200 only after JetStream stored it, so a callback is
// never lost between ThingSpace and the stream; the raw message is acked only
// after its event is stored, so nothing is lost between the stream and the
// status events. Redeliveries and ThingSpace's resends give the same eventId
// and the status stream's duplicate window drops the copies.
//
// Watermill carries the per-message flow only; the HTTP intake, status
// publishing and dead letters use the jetstream package on a connection this
// package owns (watermill-nats closes connections handed to it, so its
// subscriber gets one of its own).
//
// It is an application package: it imports models (status, device), adapters
// (thingspace, correlation, broker) and leaves (config, observability); it
// must not import cmd nor the dispatcher's package, and nothing but cmd
// imports it.
package callback
