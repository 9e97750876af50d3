// Package broker owns the pipeline's use of NATS: the connection (reconnect
// forever, credentials), the streams and buckets the services create or
// update at start-up, and the dead-letter subjects.
//
// It is an adapter: it may import models (status, command) and leaves
// (config), never the application packages or cmd.
package broker
