// Package natstest runs the real nats-server, embedded in the test process,
// with JetStream on a random port and storage in the test's temporary
// directory. Only tests import it.
package natstest
