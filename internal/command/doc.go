// Package command owns what a producer asks for: the profile actions
// (the action table: the five of the API pages and the lifecycle that
// undoes them) with their ThingSpace
// endpoints and command subjects, and the decoding of a command message's
// body into a [Command]: its valid devices, ready to batch, and its
// [Problem]s, one per device that must be rejected.
//
// Decoding follows the contract's promise that bad input loses nothing and one
// bad device sinks nothing: a body from which nothing can be read is an error
// wrapping [ErrUndecodable] (for the dead-letter subject); a command that is
// invalid as a whole lists every device as a Problem with the command's
// reason; a device with a bad or missing identifier is a Problem of its own
// while the others proceed. Structure is checked by the action's JSON Schema
// (package schemas), identifier formats by package device.
//
// It is a model package: no I/O, no logging. It imports the standard library,
// internal/device, internal/status and schemas only.
package command
