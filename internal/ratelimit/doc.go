// Package ratelimit keeps the dispatchers within ThingSpace's call rate.
// Local is a token bucket per scope in one process (golang.org/x/time/rate);
// Fleet is one token bucket per scope for every dispatcher together, kept
// in a JetStream key-value bucket, counted in the server's time. Both obey
// ThingSpace's 429 answers: they pause for Retry-After (capped) and halve
// their rate, then earn the configured rate back step by step.
//
// It is an adapter-side leaf: it imports nothing of this module.
package ratelimit
