// Package order keeps each device's commands in publish order while a
// dispatcher batches, retries, is restarted and takes over from another.
//
// A Book is told what arrives (a command message, with what an earlier
// delivery already settled), what a takeover read learned (commands
// delivered elsewhere and not known to be acknowledged), which outcomes are
// stored and where the consumer's ack floor is; it answers which devices of
// which commands may go now (send, skip or fail) and which commands may be
// acknowledged. Its rules:
//
//  1. A device of a command is released only when every earlier command
//     naming that device, here or learned by the takeover read, has its
//     outcome for it stored or is acknowledged. A device is named by each
//     of its lanes: its key and the other identifiers it is known by (the
//     eUICC's EID beside a profile's ICCID), so commands naming one eUICC
//     by its EID and by an ICCID on it keep publish order.
//  2. A released device whose outcome an earlier delivery already stored
//     is skipped; rule 1 makes "an outcome of this command or of a later
//     one for this device is stored" the exact test of that.
//  3. A command is acknowledged once every one of its devices is settled.
//
// It is a model: no I/O, no clock of its own (times are passed in). It
// imports nothing of the module.
package order
