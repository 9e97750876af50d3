#!/bin/sh
# make-dev-ca.sh: a development CA and every certificate docker-compose.yml
# mounts, in deploy/certs/dev/ (or $CERT_DIR). For the dev stack only: the
# keys are readable by the containers' users, and the CA key sits beside
# them. Production takes its certificates from cert-manager (Kubernetes) or
# its own PKI, and the public callback endpoint needs a certificate of a CA
# ThingSpace trusts.
#
#   deploy/certs/make-dev-ca.sh            # once; again with --force to replace all
#
# Made (PEM; <name>.pem and <name>-key.pem):
#   ca                      the CA every client and server trusts
#   nats-server             nats-1..3: client listener and routes (server and client auth)
#   dispatcher, callback-ingest, esimctl, operator
#                           NATS client certificates, one per NATS user (client auth)
#   callback-ingest-https   the ingests' callback listener (TLS_CERT_FILE), behind callback-lb
#   callback-lb             nginx's public callback endpoint (localhost:8443)
set -eu

dir=${CERT_DIR:-$(dirname "$0")/dev}
days=${CERT_DAYS:-825}
if [ -e "$dir/ca.pem" ] && [ "${1:-}" != "--force" ]; then
	echo "$dir/ca.pem exists; run with --force to make a new CA and certificates" >&2
	exit 0
fi
mkdir -p "$dir"
umask 022

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -sha256 -days "$days" \
	-subj "/CN=thingspace-esim dev CA" \
	-addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
	-keyout "$dir/ca-key.pem" -out "$dir/ca.pem" 2>/dev/null

# issue NAME USAGE SANS: a P-256 key and a certificate signed by the CA.
issue() {
	name=$1 usage=$2 sans=$3
	ext=$(mktemp)
	printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=%s\n' "$usage" >"$ext"
	if [ -n "$sans" ]; then
		printf 'subjectAltName=%s\n' "$sans" >>"$ext"
	fi
	openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -sha256 -subj "/CN=$name" \
		-keyout "$dir/$name-key.pem" -out "$dir/$name.csr" 2>/dev/null
	openssl x509 -req -in "$dir/$name.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca-key.pem" -CAcreateserial \
		-days "$days" -sha256 -extfile "$ext" -out "$dir/$name.pem" 2>/dev/null
	rm -f "$dir/$name.csr" "$ext"
	chmod 0644 "$dir/$name-key.pem" # the dev containers run as other users
}

issue nats-server serverAuth,clientAuth "DNS:nats-1,DNS:nats-2,DNS:nats-3,DNS:localhost,IP:127.0.0.1"
for user in dispatcher callback-ingest esimctl operator; do
	issue "$user" clientAuth ""
done
issue callback-ingest-https serverAuth "DNS:callback-ingest-1,DNS:callback-ingest-2,DNS:localhost,IP:127.0.0.1"
issue callback-lb serverAuth "DNS:callback-lb,DNS:localhost,IP:127.0.0.1"
rm -f "$dir/ca.srl"
chmod 0600 "$dir/ca-key.pem"
echo "certificates in $dir"
