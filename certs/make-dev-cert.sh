#!/usr/bin/env bash
# Makes a self-signed certificate for localhost, FOR DEVELOPMENT ONLY.
#
#   bash certs/make-dev-cert.sh [OUT_DIR]     (default: certs/dev)
#
# Writes OUT_DIR/localhost.pem (certificate) and OUT_DIR/localhost-key.pem
# (private key), valid for localhost, 127.0.0.1 and ::1 for ten years.
# Browsers will warn about it; never use it on a real server.
set -euo pipefail
out=${1:-"$(dirname "$0")/dev"}
mkdir -p "$out"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
  -days 3650 -subj "/CN=localhost (sse-fanout development only)" \
  -addext "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1" \
  -addext "basicConstraints=critical,CA:FALSE" \
  -addext "extendedKeyUsage=serverAuth" \
  -keyout "$out/localhost-key.pem" -out "$out/localhost.pem" 2>/dev/null
echo "wrote $out/localhost.pem and $out/localhost-key.pem (self-signed, development only)"
