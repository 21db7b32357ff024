#!/usr/bin/env bash
# Quick start, command 1: run the CA in dev mode and show it working.
#
# Installs SoftHSM2 if missing, builds the CA, the reference client and the admin CLI, starts
# `ca-service serve --dev` (a private SoftHSM token, the CA key made by the real ceremony,
# the embedded store and a dev TLS PKI, all under ./data), enrolls a demo user over gRPC
# as the dev principal `sync-server` (mTLS), renews, and shows a second key for the same
# user being refused; then (mTLS only) the dual-control identity reset through the admin CLI:
# admin-alice requests it, cannot approve it herself, admin-bob approves, the new key is pinned.
# Then keeps serving until Ctrl-C.
#
# Environment: DATA_DIR (default ./data), PORT (default 50051), DEMO_ONLY=1 to stop after the demo,
# PLAINTEXT=1 to serve `--plaintext` instead (no TLS, nobody authenticated, loopback only).
set -euo pipefail
cd "$(dirname "$0")/.."

DATA_DIR=${DATA_DIR:-./data}
PORT=${PORT:-50051}
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
command -v softhsm2-util >/dev/null || missing+=(softhsm2)
command -v cc >/dev/null || missing+=(gcc libc6-dev)
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]} (apt-get)"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if ! command -v cargo >/dev/null; then
  echo "dev.sh: cargo not found: install Rust with rustup (https://rustup.rs) and run this again" >&2
  exit 1
fi

say "building ca-service and e2ee-client"
cargo build --quiet -p ca-service -p e2ee-client -p e2ee-ca-admin
BIN=./target/debug

say "starting the CA in dev mode on 127.0.0.1:$PORT (data in $DATA_DIR)"
mkdir -p "$DATA_DIR"
LOG="$DATA_DIR/ca-service.log"
MODE=()
if [ "${PLAINTEXT:-0}" = 1 ]; then
  MODE=(--plaintext)
fi
"$BIN/ca-service" serve --dev "${MODE[@]}" --data-dir "$DATA_DIR" --listen "127.0.0.1:$PORT" >"$DATA_DIR/ca-service.out" 2>"$LOG" &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 600); do
  grep -q '^listening on' "$DATA_DIR/ca-service.out" 2>/dev/null && break
  if ! kill -0 $SERVER 2>/dev/null; then
    echo "dev.sh: the CA exited during startup:" >&2
    cat "$DATA_DIR/ca-service.out" "$LOG" >&2
    exit 1
  fi
  sleep 0.1
done
cat "$DATA_DIR/ca-service.out"

if [ "${PLAINTEXT:-0}" = 1 ]; then
  CA="http://127.0.0.1:$PORT"
  CLIENT=("$BIN/e2ee-client" --ca "$CA")
else
  # mTLS as the dev principal sync-server (the PKI is printed above; CN = principal name).
  PKI="$DATA_DIR/dev-pki"
  CA="https://127.0.0.1:$PORT"
  CLIENT=("$BIN/e2ee-client" --ca "$CA" --ca-cert "$PKI/ca.pem" --cert "$PKI/sync-server.pem" --key "$PKI/sync-server-key.pem")
fi
DEMO="$DATA_DIR/demo"

say "GetCaInfo: the CA's certificate fingerprint and public key"
"${CLIENT[@]}" ca-info

say "alice enrolls her laptop: a new RSA-2048 key is certified and pinned (later runs: renewed)"
"${CLIENT[@]}" enroll --user alice --dir "$DEMO/alice-laptop" | sed -n '1,5p'
if command -v openssl >/dev/null; then
  openssl x509 -in "$DEMO/alice-laptop/certificate.pem" -noout -subject -issuer -serial -dates -ext keyUsage,basicConstraints
fi

say "the laptop renews with the same key: allowed"
"${CLIENT[@]}" enroll --user alice --dir "$DEMO/alice-laptop" | sed -n '3,4p'

say "a second key for alice (say, an attacker's): refused, the pinned key is named"
rm -rf "$DEMO/alice-other-key"
if "${CLIENT[@]}" enroll --user alice --dir "$DEMO/alice-other-key" >/dev/null 2>"$DEMO/refusal.txt"; then
  echo "dev.sh: the CA certified a second key for alice: this must never happen" >&2
  exit 1
fi
cat "$DEMO/refusal.txt"

if [ -n "${PKI:-}" ]; then
  # A fresh user each run, so that a reset demo never touches alice's pinned laptop key.
  USER_R="carol-$(date +%s)"
  admin() { "$BIN/e2ee-ca-admin" --endpoint "$CA" --ca-cert "$PKI/ca.pem" --cert "$PKI/$1.pem" --key "$PKI/$1-key.pem" "${@:2}"; }
  say "$USER_R enrolls, loses every device; admin-alice requests an identity reset, admin-bob approves it"
  "${CLIENT[@]}" enroll --user "$USER_R" --dir "$DEMO/$USER_R-old" >/dev/null
  REQUEST=$(admin admin-alice --json reset request "$USER_R" --reason "dev.sh demo: lost every device" \
    | grep -o '"request_id": *"[0-9a-f]*"' | grep -o '[0-9a-f]\{32\}')
  if admin admin-alice request approve "$REQUEST" >/dev/null 2>&1; then
    echo "dev.sh: admin-alice approved her own request: this must never happen" >&2
    exit 1
  fi
  echo "admin-alice cannot approve her own request $REQUEST (PERMISSION_DENIED)"
  admin admin-bob request approve "$REQUEST"
  say "$USER_R's new device: the new key is pinned, the old certificate revoked (it is in the next CRL)"
  "${CLIENT[@]}" enroll --user "$USER_R" --dir "$DEMO/$USER_R-new" | sed -n '1,3p'
  admin admin-bob identity show "$USER_R"
fi

say "the CA is running at $CA (logs: $LOG)"
if [ "${DEMO_ONLY:-0}" = 1 ]; then
  exit 0
fi
echo "Press Ctrl-C to stop. Other things to try:"
echo "  ${CLIENT[*]} lookup --user alice"
echo "  ${CLIENT[*]} enroll --user bob --dir $DEMO/bob"
wait $SERVER
