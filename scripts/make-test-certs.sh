#!/usr/bin/env bash
# Throw-away certificates for trying TLS / mTLS on one machine and for the tests:
#   ca.pem, ca.key                 a CA
#   server.pem, server.key         signed by it, for DNS:localhost and IP:127.0.0.1
#   client.pem, client.key         a client certificate signed by it
#   other-ca.pem, other-ca.key     an unrelated CA
#   other-client.pem, other-client.key   a client certificate signed by the unrelated CA
# EC P-256 keys (fast), no prompts, valid for 30 days. Never use these for anything real.
#
# usage: scripts/make-test-certs.sh OUTDIR
set -euo pipefail

if [[ $# -ne 1 ]]; then
  echo "usage: $0 OUTDIR" >&2
  exit 2
fi
out=$1
mkdir -p "$out"
cd "$out"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
umask 077  # the keys are throw-away, but a private key stays private all the same

days=30

new_key() {
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null
}

# new_ca NAME SUBJECT
new_ca() {
  new_key "$1.key"
  openssl req -x509 -new -key "$1.key" -sha256 -days "$days" -subj "$2" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -out "$1.pem"
}

# new_leaf NAME SUBJECT CA EXTENSIONS
new_leaf() {
  new_key "$1.key"
  openssl req -new -key "$1.key" -subj "$2" -out "$tmp/$1.csr"
  printf '%s\n' "$4" > "$tmp/$1.ext"
  openssl x509 -req -in "$tmp/$1.csr" -CA "$3.pem" -CAkey "$3.key" -CAcreateserial \
    -CAserial "$tmp/$3.srl" -sha256 -days "$days" -extfile "$tmp/$1.ext" -out "$1.pem" 2>/dev/null
}

server_ext="basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectAltName=DNS:localhost,IP:127.0.0.1"
client_ext="basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth"

new_ca ca "/CN=diffmesh test CA"
new_leaf server "/CN=localhost" ca "$server_ext"
new_leaf client "/CN=diffmesh test client" ca "$client_ext"
new_ca other-ca "/CN=diffmesh unrelated test CA"
new_leaf other-client "/CN=diffmesh unrelated client" other-ca "$client_ext"

# Certificates are public; let whoever runs the services read them.
chmod 644 ./*.pem
echo "wrote $(pwd)/{ca,server,client,other-ca,other-client}.{pem,key}"
