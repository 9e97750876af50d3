// Package archtest keeps the import direction of the module true:
//
//	cmd → application → adapters → models → leaves
//
// Its tests read the import graph with `go list -deps -json ./...` and check
// it against one rule table (archtest_test.go) in which layers are named by
// path prefix, so packages created later are covered: an unlisted package
// counts as an adapter until the table says otherwise. Models (device,
// command, status, batch) import only each other, schemas, the standard
// library minus I/O, and third-party libraries the table allows; nothing
// imports a program; internal/natstest and internal/testkit are for tests only.
//
// It has no code of its own and must not be imported.
package archtest
