#!/bin/sh
# Creates, or brings up to date, every stream, the buckets and the
# consumers of the pipeline from the definitions next to this script, with
# the nats CLI (https://github.com/nats-io/natscli). It uses the CLI's usual
# context and flags: NATS_URL, NATS_CREDS, --context ... through $NATS_OPTS.
#
#   NATS_URL=nats://nats.example:4222 deploy/jetstream/apply.sh
#   NATS="go run github.com/nats-io/natscli/nats@v0.5.0" deploy/jetstream/apply.sh
#
# The services create the same definitions at start (CreateOrUpdate); this is
# for operators who provision JetStream ahead of them, e.g. when the services'
# NATS user may not manage streams. The files are written from the code by
# `go test ./deploy -update`; edit the code, not the files.
set -eu

dir=$(cd "$(dirname "$0")" && pwd)
NATS=${NATS:-nats}
NATS_OPTS=${NATS_OPTS:-}

# Streams first, the bucket's backing stream with them, consumers last.
for f in "$dir"/streams/*.json "$dir"/kv/*.json; do
	name=$(basename "$f" .json)
	if $NATS $NATS_OPTS stream info "$name" >/dev/null 2>&1; then
		echo "stream $name: updating"
		$NATS $NATS_OPTS stream edit "$name" --config "$f" --force
	else
		echo "stream $name: creating"
		$NATS $NATS_OPTS stream add "$name" --config "$f"
	fi
done

for f in "$dir"/consumers/*/*.json; do
	stream=$(basename "$(dirname "$f")")
	name=$(basename "$f" .json)
	if $NATS $NATS_OPTS consumer info "$stream" "$name" >/dev/null 2>&1; then
		echo "consumer $stream/$name: updating"
		$NATS $NATS_OPTS consumer edit "$stream" "$name" --config "$f" --force
	else
		echo "consumer $stream/$name: creating"
		$NATS $NATS_OPTS consumer add "$stream" "$name" --config "$f"
	fi
done
