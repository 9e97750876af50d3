// Package schemas owns the JSON Schemas (draft 2020-12) of the pipeline's
// outside contract and validates documents against them at run time:
//
//   - command-<action>.schema.json: the body of a message on
//     thingspace.profile.commands.<action>, one file per action;
//   - status-event.schema.json: a status event, field for field
//     internal/status.Event;
//   - callback.schema.json: ThingSpace's DeviceProfileResponse callback,
//     tolerant of what the API pages show (mixed case, string counts).
//
// The files are embedded; examples/<schema>[.<variant>].json beside them are
// valid instances, checked by the tests. Each schema is compiled once, on
// first use.
//
// It is a leaf: it imports the standard library and the validator only, never
// a package of this module, and does no I/O beyond reading its embedded files.
package schemas
