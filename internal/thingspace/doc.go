// Package thingspace is the adapter to Verizon ThingSpace's M2M REST API for
// eSIM profile actions: the wire types (request bodies, the
// DeviceProfileResponse callback, request status, callback registrations),
// a [Client] that authenticates (OAuth2 client credentials plus an M2M
// session, re-authenticating once on expiry with a single login in flight),
// and one typed [APIError] for ThingSpace's three error body shapes with
// sentinels and the helpers [Retryable], [RetryAfter], [IsAuth] and
// [IsPermanent]. Business errors come with dotted codes
// (DeviceService.INPUT_INVALID.Device.Identifier.Invalid) or, on the Global
// eSIM endpoints, with the HTTP status as the code ("400"); [RefusalScope]
// and [IsDeviceRefusal] tell a device's refusal from the account's or the
// whole request's in both forms.
//
// The client retries nothing but the token cases: rate limiting, backoff and
// retries of 429, 5xx and timeouts belong to the caller, which decides with
// [Retryable] and [RetryAfter].
//
// Secrets (client secret, password, tokens, callback credentials) never
// appear in an error string or a log line written by this package.
//
// It is an adapter: it may import internal/device, never internal/status nor
// any application package (dispatch, callback) or cmd.
package thingspace
