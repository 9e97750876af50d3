// Package ratelimit keeps the dispatcher within ThingSpace's call rate. The
// local limiter is a token bucket (golang.org/x/time/rate) that also obeys
// ThingSpace's 429 answers: it pauses for Retry-After and halves its rate,
// then earns the configured rate back step by step.
//
// It is an adapter-side leaf: it imports nothing of this module.
package ratelimit
