// Command esimctl is the operator CLI of the eSIM pipeline: it submits a CSV
// of SIMs as profile-action commands over NATS, follows their status events
// with live progress, and writes which devices went through and which did
// not. See `esimctl --help` and internal/esimctl.
//
// main only calls esimctl.Run; the program lives in internal/esimctl, where
// it is tested against the real services.
package main
