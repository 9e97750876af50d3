package callback

import (
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func items(n int) []*parsedCallback {
	out := make([]*parsedCallback, n)
	for i := range out {
		out[i] = &parsedCallback{}
	}
	return out
}

func TestHandoffGivesBackWhatWasPutUntilTaken(t *testing.T) {
	h := newHandoff(100, time.Minute)
	a := items(3)
	h.put("a", a)
	require.Equal(t, a, h.get("a"), "get leaves the entry")
	require.Equal(t, a, h.get("a"))
	require.Equal(t, a, h.take("a"))
	require.Nil(t, h.get("a"), "taken")
	require.Nil(t, h.take("a"))
	require.Nil(t, h.get(""), "no id, no entry")
	require.Zero(t, h.items)
}

func TestHandoffDropsOldestPastItsCallbackLimit(t *testing.T) {
	h := newHandoff(10, time.Minute)
	h.put("a", items(4))
	h.put("b", items(4))
	h.put("c", items(4)) // 12 > 10: a goes
	require.Nil(t, h.get("a"))
	require.NotNil(t, h.get("b"))
	require.NotNil(t, h.get("c"))
	require.Equal(t, 8, h.items)
}

func TestHandoffDropsEntriesOlderThanItsAgeAndForgetsTakenIDs(t *testing.T) {
	now := time.Unix(1000, 0)
	h := newHandoff(1000, time.Minute)
	h.now = func() time.Time { return now }
	h.put("old", items(1)) // delivered to another instance: never taken here
	for i := range 50 {
		id := string(rune('A' + i))
		h.put(id, items(1))
		h.take(id)
	}
	require.NotNil(t, h.get("old"), "younger than the age limit")
	require.Len(t, h.queue, 51, "taken ids wait behind the oldest live one")

	now = now.Add(2 * time.Minute)
	h.put("new", items(1))
	require.Nil(t, h.get("old"), "past the age limit")
	require.NotNil(t, h.get("new"))
	require.Len(t, h.queue, 1, "only the live entry is left in the queue")
	require.Equal(t, 1, h.items)
}

func TestBatchFramingRoundTrips(t *testing.T) {
	at := time.Date(2026, 11, 23, 21, 0, 0, 123456789, time.UTC)
	batch := []*pending{
		{body: []byte(`{"requestId":"r1"}`), parsed: &parsedCallback{receivedAt: at}, msgID: "id-1"},
		{body: []byte(`{}`), parsed: &parsedCallback{receivedAt: at.Add(time.Millisecond)}, msgID: ""},
		{body: nil, parsed: &parsedCallback{receivedAt: at}, msgID: "id-3"},
	}
	got, err := decodeBatch(appendBatch(nil, batch), strconv.Itoa(len(batch)))
	require.NoError(t, err)
	require.Len(t, got, 3)
	for i, p := range batch {
		require.Equal(t, string(p.body), string(got[i].Body))
		require.Equal(t, formatReceived(p.parsed.receivedAt), got[i].ReceivedAt)
		require.Equal(t, p.msgID, got[i].MsgID)
	}
	_, err = decodeBatch(appendBatch(nil, batch), "4")
	require.ErrorContains(t, err, "holds 3 callbacks, its header says 4")
	frame := appendBatch(nil, batch)
	_, err = decodeBatch(frame[:len(frame)-1], "3")
	require.ErrorContains(t, err, "cut short")
}

// TestABatchHeaderIsCheckedBeforeItSizesAnything: a Callback-Batch count
// read from a stored message (anyone allowed to publish there could write
// it) is held to the batch limit and to what the body can hold before it
// sizes an allocation.
func TestABatchHeaderIsCheckedBeforeItSizesAnything(t *testing.T) {
	frame := appendBatch(nil, []*pending{{body: []byte(`{}`), parsed: &parsedCallback{}, msgID: "a"}})
	for _, tc := range []struct{ name, header, want string }{
		{name: "a_billion", header: "1000000000", want: "out of range"},
		{name: "max_int", header: "9223372036854775807", want: "out of range"},
		{name: "negative", header: "-5", want: "out of range"},
		{name: "zero", header: "0", want: "out of range"},
		{name: "not_a_number", header: "many", want: "not a count"},
		{name: "more_than_the_body_holds", header: "1000", want: "can hold"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := decodeBatch(frame, tc.header)
			require.ErrorContains(t, err, tc.want)
		})
	}
}
