// Package observability owns what the services show about themselves: the
// zerolog logger and its field names, a Watermill LoggerAdapter over it, and
// the admin listener with /healthz, /readyz and /metrics (Prometheus).
//
// It is a leaf: it imports nothing of this module.
package observability
