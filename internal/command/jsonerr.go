package command

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"strconv"
	"strings"
)

// syntaxMessage explains why body is not JSON for a person who has the body
// in front of them: the field being read, the line and column, the parser's
// complaint.
func syntaxMessage(body []byte, err error) string {
	msg := err.Error()
	pos := len(body) // where the parser gave up
	var se *json.SyntaxError
	if errors.As(err, &se) {
		msg = se.Error()
		if msg != "unexpected end of JSON input" && se.Offset > 0 {
			pos = int(se.Offset) - 1 // Offset is just past the offending byte
		}
	}
	if strings.HasPrefix(msg, `invalid character '\n' in string literal`) ||
		strings.HasPrefix(msg, `invalid character '\r' in string literal`) {
		msg += ": the string is not closed on its line"
	}
	line, col := lineColumn(body, pos)
	where := "at line " + strconv.Itoa(line) + ", column " + strconv.Itoa(col)
	if p := failingPath(body); p != "" {
		where = p + " " + where
	}
	return "invalid JSON " + where + ": " + msg
}

// lineColumn gives the 1-based line and column (in bytes) of body[pos].
func lineColumn(body []byte, pos int) (line, col int) {
	pos = min(max(pos, 0), len(body))
	before := body[:pos]
	line = bytes.Count(before, []byte{'\n'}) + 1
	col = pos - bytes.LastIndexByte(before, '\n')
	return line, col
}

// failingPath walks body token by token and names where the parser stood
// when it failed: "in devices[0].deviceIds[1].id", "after accountName" (in
// the object, past that member), "in devices" (between elements), or "" at
// the top level.
func failingPath(body []byte) string {
	type frame struct {
		object  bool
		keyNext bool // object: the next string token is a key
		key     string
		index   int // array: index of the element last begun
	}
	var stack []frame
	begin := func() { // a value begins
		if n := len(stack); n > 0 && !stack[n-1].object {
			stack[n-1].index++
		}
	}
	end := func() { // a value ended
		if n := len(stack); n > 0 && stack[n-1].object {
			stack[n-1].keyNext = true
		}
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	started := false
	for {
		if started && len(stack) == 0 {
			return "" // the top-level value is complete: the trouble is after it
		}
		tok, err := dec.Token()
		if err != nil {
			if err == io.EOF && len(stack) == 0 {
				return ""
			}
			break
		}
		started = true
		switch t := tok.(type) {
		case json.Delim:
			switch t {
			case '{', '[':
				begin()
				stack = append(stack, frame{object: t == '{', keyNext: true, index: -1})
			default:
				stack = stack[:len(stack)-1]
				end()
			}
		case string:
			if n := len(stack); n > 0 && stack[n-1].object && stack[n-1].keyNext {
				stack[n-1].key, stack[n-1].keyNext = t, false
				continue
			}
			begin()
			end()
		default:
			begin()
			end()
		}
	}
	var b strings.Builder
	last := len(stack) - 1
	for i, f := range stack {
		switch {
		case f.object && f.key != "" && plainKey(f.key):
			if b.Len() > 0 {
				b.WriteByte('.')
			}
			b.WriteString(f.key)
		case f.object && f.key != "":
			// Any other key is quoted: the message stays on one line.
			b.WriteString("[" + strconv.Quote(f.key) + "]")
		case !f.object && f.index >= 0 && i < last:
			b.WriteString("[" + strconv.Itoa(f.index) + "]")
		}
	}
	if b.Len() == 0 {
		return ""
	}
	if top := stack[last]; top.object && top.keyNext && top.key != "" {
		return "after " + b.String()
	}
	return "in " + b.String()
}

// plainKey reports whether key can be written bare in a path: ASCII
// letters, digits, '_' and '-'.
func plainKey(key string) bool {
	for i := 0; i < len(key); i++ {
		c := key[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}
