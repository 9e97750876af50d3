// Package device owns the identifiers of a cellular device (EID, ICCID, IMEI,
// MDN, MSISDN) as value types that can only be built through [Parse], so a
// value of type [ID] is always well formed.
//
// It is a model package: it does no I/O and imports no adapter.
package device
