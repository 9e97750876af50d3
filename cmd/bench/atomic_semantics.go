package main

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/synadia-io/orbit.go/jetstreamext"

	"github.com/esim-pipeline/thingspace-esim/internal/broker"
)

// atomicSemantics runs the semantics checks on a fresh one-server store
// with sync_interval: always.
func (b *bench) atomicSemantics(ctx context.Context) ([]string, error) {
	ns, _, err := b.natsFor(ctx, "atomic-semantics", "", natsOptions{syncAlways: true})
	if err != nil {
		return nil, err
	}
	defer ns.stop(30 * time.Second)
	nc, js, err := connect(ns.url)
	if err != nil {
		return nil, err
	}
	defer nc.Close()
	if err := enableBatches(ctx, js); err != nil {
		return nil, err
	}
	return b.semanticsChecks(ctx, js, true), nil
}

// semanticsChecks publishes batches that fail in each way the server has
// (nats-server server/stream.go processJetStreamAtomicBatchMsg,
// jetstream_batching.go checkMsgHeadersPreClusteredProposal) and writes,
// for each, what the caller of jetstreamext.PublishMsgBatch got back and
// how many messages the status stream gained. all false: only the
// duplicate checks (the cluster's pass).
func (b *bench) semanticsChecks(ctx context.Context, js jetstream.JetStream, all bool) []string {
	const prefix = "sem-"
	stored := func() uint64 { n, _ := streamMsgs(ctx, js, broker.StatusStream); return n }
	events := func(from, n int64) []*nats.Msg {
		out := make([]*nats.Msg, n)
		for i := range out {
			out[i] = b.eventMsgFor(prefix, from+int64(i))
		}
		return out
	}
	plain := func(msgs ...*nats.Msg) (dups int, err error) {
		for _, m := range msgs {
			pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			// A copy: the batch's headers must not ride along.
			c := &nats.Msg{Subject: m.Subject, Data: m.Data, Header: nats.Header{}}
			for _, k := range []string{nats.MsgIdHdr, jetstream.ExpectedStreamHeader, "Esim-Command-Seq"} {
				c.Header.Set(k, m.Header.Get(k))
			}
			ack, err := js.PublishMsg(pctx, c)
			cancel()
			if err != nil {
				return dups, err
			}
			if ack.Duplicate {
				dups++
			}
		}
		return dups, nil
	}
	var lines []string
	batch := func(what string, msgs []*nats.Msg) {
		before := stored()
		bctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		ack, err := jetstreamext.PublishMsgBatch(bctx, js, msgs)
		cancel()
		lines = append(lines, fmt.Sprintf("- %s (%d events): %s; stream +%d", what, len(msgs), outcome(ack, err), stored()-before))
	}

	batch("a batch on 10 subjects, ids new", events(1, 10))
	lines = append(lines, "- what a consumer reads of that batch: "+storedHeaders(ctx, js, 1)+"; its last: "+storedHeaders(ctx, js, 10))
	batch("the same batch again, as a caller would after losing the commit's ack", events(1, 10))
	ms := events(11, 10)
	if _, err := plain(ms[2], ms[6]); err != nil {
		lines = append(lines, "- plain publish failed: "+err.Error())
	}
	batch("10 events of which 2 were stored before by plain publishes", ms)
	before := stored()
	dups, err := plain(events(11, 10)...)
	lines = append(lines, fmt.Sprintf("- the same 10 as plain publishes, one by one: %d acked as duplicates, error %v; stream +%d", dups, err, stored()-before))
	if !all {
		return lines
	}
	ms = events(21, 10)
	ms[5].Header.Set(nats.MsgIdHdr, ms[4].Header.Get(nats.MsgIdHdr))
	batch("one Nats-Msg-Id twice in one batch", ms)

	ms = events(31, 10)
	for _, m := range ms {
		m.Header.Set(jetstream.ExpectedLastSubjSeqHeader, "0")
	}
	batch("Nats-Expected-Last-Subject-Sequence: 0 on each event, right for all", ms)
	ms = events(41, 10)
	if _, err := plain(events(45, 1)...); err != nil {
		lines = append(lines, "- plain publish failed: "+err.Error())
	}
	for _, m := range ms {
		m.Header.Set(jetstream.ExpectedLastSubjSeqHeader, "0")
	}
	ms[4].Header.Set(nats.MsgIdHdr, prefix+"45-again")
	batch("Nats-Expected-Last-Subject-Sequence: 0 on each event, wrong for one (its subject has a message)", ms)
	ms = events(51, 10)
	ms[5].Subject = ms[4].Subject
	ms[5].Header.Set(jetstream.ExpectedLastSubjSeqHeader, "0")
	batch("two events on one subject, the second with Nats-Expected-Last-Subject-Sequence", ms)
	ms = events(61, 10)
	ms[3].Header.Set(jetstream.ExpectedLastMsgIDHeader, prefix+"1")
	batch("one event with Nats-Expected-Last-Msg-Id", ms)
	ms = events(71, 10)
	ms[3].Subject = broker.CallbackSubject
	ms[3].Header.Del(jetstream.ExpectedStreamHeader)
	batch("one of 10 events on another stream's subject", ms)
	batch("1,001 events, the default limit being 1,000", events(100, 1001))

	// A batch never committed: its caller went away.
	bp, err := jetstreamext.NewBatchPublisher(js)
	if err == nil {
		before := stored()
		for _, m := range events(2000, 5) {
			if err = bp.AddMsg(m); err != nil {
				break
			}
		}
		lines = append(lines, fmt.Sprintf("- 5 events added, no commit (the caller gone): adds %s; stream +%d (the server drops the batch after 10 s without a message, max_batch_timeout)",
			outcome(nil, err), stored()-before))
	}
	// The in-flight limit: 50 open batches per stream by default.
	open, firstErr := 1, error(nil) // the uncommitted batch above is still open
	for i := range 60 {
		bp, err := jetstreamext.NewBatchPublisher(js)
		if err != nil {
			firstErr = err
			break
		}
		if err := bp.AddMsg(b.eventMsgFor(prefix, int64(3000+i))); err != nil {
			firstErr = err
			break
		}
		open++
	}
	lines = append(lines, fmt.Sprintf("- batches opened (first message added, acked) and left open: %d open, then: %s", open, outcome(nil, firstErr)))
	return lines
}

// storedHeaders lists the headers the status stream kept on message seq.
func storedHeaders(ctx context.Context, js jetstream.JetStream, seq uint64) string {
	st, err := js.Stream(ctx, broker.StatusStream)
	if err != nil {
		return err.Error()
	}
	m, err := st.GetMsg(ctx, seq)
	if err != nil {
		return err.Error()
	}
	keys := make([]string, 0, len(m.Header))
	for k := range m.Header {
		v := m.Header.Get(k)
		if k == "Nats-Batch-Id" {
			v = "<nuid>"
		}
		keys = append(keys, k+": "+v)
	}
	slices.Sort(keys)
	return m.Subject + " {" + strings.Join(keys, ", ") + "}"
}

// outcome is what PublishMsgBatch's caller got.
func outcome(ack *jetstreamext.BatchAck, err error) string {
	var apiErr *jetstream.APIError
	switch {
	case err == nil && ack == nil:
		return "no error"
	case err == nil:
		return "acked, last sequence " + strconv.FormatUint(ack.Sequence, 10) + ", count " + strconv.FormatUint(ack.BatchSize, 10)
	case errors.As(err, &apiErr):
		return fmt.Sprintf("error %d (HTTP-like %d) %q", apiErr.ErrorCode, apiErr.Code, apiErr.Description)
	default:
		return fmt.Sprintf("error %q", err.Error())
	}
}
