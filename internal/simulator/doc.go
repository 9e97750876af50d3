// Package simulator is a stand-in for Verizon ThingSpace's eSIM profile API,
// for tests, the dev stack and benchmarks: an [http.Handler] that answers
// like ThingSpace (OAuth2 token, M2M session, callback registration, the five
// profile actions, request status on the v2 and the v1 path, in the real
// error body shapes, with the Global eSIM endpoints' numeric error codes),
// agreeing with Verizon's generated SDK where it and the pages differ, and a
// bounded pool of workers that delivers one DeviceProfileResponse callback
// per device to the account's registered listener, resending unanswered ones
// as ThingSpace does.
//
// Faults (5xx, dropped connections, latency, 429s, warning, failed, lost and
// never-settled callbacks, refused identifiers) are set at construction and
// changed at run time with [Server.SetFaults] or the admin endpoint
// /sim/faults. Every call and every delivery is recorded for inspection
// ([Server.Calls], [Server.Deliveries], [Server.Stats], GET /sim/calls).
//
// It imports the thingspace adapter (for the wire types) and internal/device;
// nothing but tests and cmd/thingspace-sim may import it.
package simulator
