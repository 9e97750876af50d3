// Package config reads a program's settings once, at start: each setting has
// a flag, an environment variable and a default (flag wins over environment,
// environment over default). Secrets are [Secret] values that print as
// [redacted] and may be read from a file named by <VAR>_FILE.
//
// It is a leaf: it imports nothing of this module.
package config
