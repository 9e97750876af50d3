package callback

import (
	"bytes"
	"encoding/json"
)

// The member names that hold credentials in a callback: the listener's
// username and password ThingSpace echoes at the top level, and each
// device's deviceCredential. JSON decoders match member names without
// regard to case, so these are compared the same way.
var (
	keyUsername         = []byte("username")
	keyPassword         = []byte("password")
	keyDeviceCredential = []byte("deviceCredential")
)

// maxScanDepth is how deep the scanner tracks objects. Deeper members are
// passed over as opaque bytes: a callback's credentials are at depth 1
// (username, password) and 3 or 4 (deviceCredential), and a fixed-size
// stack keeps the scan free of allocations however the body nests.
const maxScanDepth = 64

// scanMembers walks body as JSON text, without building anything, and
// calls f for each object member it meets at depth 1..maxScanDepth with
// the member's key (raw, between its quotes), where the member starts (its
// key's opening quote) and where its value starts. f answers where to go
// on: -1 to walk into the value as usual, or an offset past it (f skipped
// the value: the scan goes on as after any value), or len(body) to stop. Malformed text is walked as far as it
// goes; the scan never fails, never reads past body and takes one pass.
func scanMembers(body []byte, f func(depth int, key []byte, memberStart, valueStart int) int) {
	var stack [maxScanDepth]byte // '{' or '[' of each open container we track
	depth := 0                   // containers open, tracked or not
	for i := 0; i < len(body); {
		switch c := body[i]; c {
		case '"':
			end := stringEnd(body, i)
			// In an object, a string followed by ':' is a key: in valid
			// JSON only keys are, and in broken JSON (a comma missing) it
			// is where a decoder would have looked for one.
			if depth == 0 || depth > maxScanDepth || stack[depth-1] != '{' {
				i = end
				continue
			}
			j := skipSpace(body, end)
			if j >= len(body) || body[j] != ':' {
				i = end
				continue
			}
			key := body[i+1 : max(end-1, i+1)]
			if next := f(depth, key, i, skipSpace(body, j+1)); next >= 0 {
				i = next
				continue
			}
			i = j + 1
			continue
		case '{', '[':
			if depth < maxScanDepth {
				stack[depth] = c
			}
			depth++
		case '}', ']':
			if depth > 0 {
				depth--
			}
		}
		i++
	}
}

// stringEnd is the offset after the string starting at body[i] (a quote),
// or len(body) when it is not closed.
func stringEnd(body []byte, i int) int {
	for j := i + 1; j < len(body); j++ {
		switch body[j] {
		case '\\':
			j++
		case '"':
			return j + 1
		}
	}
	return len(body)
}

// valueEnd is the offset after the JSON value starting at body[i]: a
// string, an object or array with everything in it, or a bare word
// (number, true, false, null) up to the next delimiter. A value that is
// not closed runs to the end of body.
func valueEnd(body []byte, i int) int {
	if i >= len(body) {
		return len(body)
	}
	switch body[i] {
	case '"':
		return stringEnd(body, i)
	case '{', '[':
		depth := 0
		for j := i; j < len(body); j++ {
			switch body[j] {
			case '"':
				j = stringEnd(body, j) - 1
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return j + 1
				}
			}
		}
		return len(body)
	}
	for j := i; j < len(body); j++ {
		switch body[j] {
		case ',', '}', ']', ' ', '\t', '\r', '\n':
			return j
		}
	}
	return len(body)
}

func skipSpace(body []byte, i int) int {
	for i < len(body) && (body[i] == ' ' || body[i] == '\t' || body[i] == '\r' || body[i] == '\n') {
		i++
	}
	return i
}

// keyIs reports whether a raw member key names want, as a JSON decoder
// would match it: escapes decoded, case folded.
func keyIs(raw, want []byte) bool {
	if bytes.IndexByte(raw, '\\') < 0 {
		return bytes.EqualFold(raw, want)
	}
	var s string
	if json.Unmarshal(append(append([]byte{'"'}, raw...), '"'), &s) != nil {
		return false
	}
	return bytes.EqualFold([]byte(s), want)
}

// bodyCredentials finds the top-level username and password of a callback
// body without parsing it: one pass that stops once both are found, and
// allocates nothing unless a value holds escapes. ok is false when either
// is missing or is not a JSON string.
func bodyCredentials(body []byte) (user, pass string, ok bool) {
	var haveUser, havePass bool
	scanMembers(body, func(depth int, key []byte, _, valueStart int) int {
		if depth != 1 {
			return -1
		}
		var dst *string
		var have *bool
		switch {
		case !haveUser && keyIs(key, keyUsername):
			dst, have = &user, &haveUser
		case !havePass && keyIs(key, keyPassword):
			dst, have = &pass, &havePass
		default:
			return -1
		}
		end := valueEnd(body, valueStart)
		if v, isString := jsonString(body[valueStart:end]); isString {
			*dst, *have = v, true
		}
		if haveUser && havePass {
			return len(body)
		}
		return end
	})
	return user, pass, haveUser && havePass
}

// jsonString decodes a JSON string token.
func jsonString(tok []byte) (string, bool) {
	if len(tok) < 2 || tok[0] != '"' || tok[len(tok)-1] != '"' {
		return "", false
	}
	if bytes.IndexByte(tok, '\\') < 0 {
		return string(tok[1 : len(tok)-1]), true
	}
	var s string
	if json.Unmarshal(tok, &s) != nil {
		return "", false
	}
	return s, true
}

// stripCredentials removes every username, password and deviceCredential
// member (key, value and one separating comma) from body, in place, and
// returns the shortened body. Everything else stays byte for byte, so the
// stored callback parses to the same event (the same eventId) as the one
// received. Text that is not valid JSON is cleaned as far as it can be
// read: a credential whose value is not closed is cut to the end.
func stripCredentials(body []byte) []byte {
	// A valid body is clean after one pass. Broken text can hide a member
	// behind another (a fragment that becomes a key once its neighbour is
	// cut): a few more passes, then whatever still reads as a credential
	// is cut off with everything after it.
	for range 4 {
		n := len(body)
		if body = stripOnce(body); len(body) == n {
			return body
		}
	}
	if at := firstCredential(body); at >= 0 {
		body = body[:at]
	}
	return body
}

func isCredentialKey(key []byte) bool {
	return keyIs(key, keyUsername) || keyIs(key, keyPassword) || keyIs(key, keyDeviceCredential)
}

// firstCredential is where the first credential member starts, or -1.
func firstCredential(body []byte) int {
	at := -1
	scanMembers(body, func(_ int, key []byte, memberStart, _ int) int {
		if isCredentialKey(key) {
			at = memberStart
			return len(body)
		}
		return -1
	})
	return at
}

// stripOnce is one pass of stripCredentials.
func stripOnce(body []byte) []byte {
	var spans [8][2]int
	cut := spans[:0] // ascending, merged
	scanMembers(body, func(_ int, key []byte, memberStart, valueStart int) int {
		if !isCredentialKey(key) {
			return -1
		}
		vEnd := valueEnd(body, valueStart)
		start, end := memberStart, vEnd
		if j := skipSpace(body, end); j < len(body) && body[j] == ',' {
			end = j + 1 // the comma after it
		} else {
			// The last member: take the comma before it, looking past
			// what is already cut.
			p, k := memberStart-1, len(cut)-1
			for p >= 0 {
				if k >= 0 && p < cut[k][1] && p >= cut[k][0] {
					p = cut[k][0] - 1
					k--
					continue
				}
				if body[p] == ' ' || body[p] == '\t' || body[p] == '\r' || body[p] == '\n' {
					p--
					continue
				}
				break
			}
			if p >= 0 && body[p] == ',' {
				start = p
			}
		}
		if n := len(cut); n > 0 && start <= cut[n-1][1] {
			cut[n-1][0] = min(cut[n-1][0], start)
			cut[n-1][1] = max(cut[n-1][1], end)
		} else {
			cut = append(cut, [2]int{start, end})
		}
		return vEnd // the scan goes on after the value, at its comma
	})
	if len(cut) == 0 {
		return body
	}
	w := cut[0][0]
	for k, c := range cut {
		next := len(body)
		if k+1 < len(cut) {
			next = cut[k+1][0]
		}
		w += copy(body[w:], body[c[1]:next])
	}
	return body[:w]
}

// hasCredentials reports whether body still names a credential member.
func hasCredentials(body []byte) bool { return firstCredential(body) >= 0 }
