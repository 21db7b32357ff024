#!/usr/bin/env bash
# Peers on this machine, from the same RSA-2048 user CSR, for orientation next to our own benches:
# - OpenSSL signing through the same kind of SoftHSM token (libengine-pkcs11-openssl), one process
#   per certificate as operators script it, WORKERS processes at a time;
# - cfssl (`cfssl serve`) with a software key of the same type, driven through its HTTP sign API
#   by CLIENTS concurrent connections (wrk).
# Usage: ca-service/benches/peers.sh [SECONDS] [CLIENTS] [WORKERS]   (defaults 8 16 2)
set -euo pipefail
cd "$(dirname "$0")/../.."
DURATION=${1:-8}
CLIENTS=${2:-16}
WORKERS=${3:-2}

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
missing=()
command -v softhsm2-util >/dev/null || missing+=(softhsm2)
command -v cfssl >/dev/null || missing+=(golang-cfssl)
command -v wrk >/dev/null || missing+=(wrk)
ls /usr/lib/*/engines-3/pkcs11.so >/dev/null 2>&1 || missing+=(libengine-pkcs11-openssl)
if [ ${#missing[@]} -gt 0 ]; then
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1 ||
    { echo "peers.sh: apt-get install ${missing[*]} failed" >&2; exit 1; }
fi
cargo build --release --quiet -p ca-service
CA_SERVICE=$PWD/target/release/ca-service
MODULE=$(ls /usr/lib/softhsm/libsofthsm2.so /usr/lib/*/softhsm/libsofthsm2.so 2>/dev/null | head -n 1)
ENGINE=$(ls /usr/lib/*/engines-3/pkcs11.so | head -n 1)

WORK=$(mktemp -d)
CFSSL_PID=""
cleanup() { [ -n "$CFSSL_PID" ] && kill "$CFSSL_PID" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT

# A private token holding one CA key per type, made by our own ceremony.
mkdir -p "$WORK/softhsm/tokens"
printf 'directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n' "$WORK/softhsm/tokens" >"$WORK/softhsm/softhsm2.conf"
export SOFTHSM2_CONF=$WORK/softhsm/softhsm2.conf
PIN=peers-user-pin
softhsm2-util --init-token --free --label peers --so-pin peers-so-pin --pin "$PIN" >/dev/null
printf '%s' "$PIN" >"$WORK/pin"
for algorithm in ecdsa-p256 rsa-3072; do
  cat >"$WORK/ceremony-$algorithm.toml" <<EOF
mode = "root"
key_label = "peers-$algorithm"
key_algorithm = "$algorithm"
output = "ca-$algorithm.pem"
[subject]
common_name = "Peers CA $algorithm"
[hsm]
module = "$MODULE"
softhsm2_conf = "$SOFTHSM2_CONF"
token_label = "peers"
pin_file = "pin"
EOF
  "$CA_SERVICE" ceremony --config "$WORK/ceremony-$algorithm.toml" >/dev/null
done

openssl req -new -newkey rsa:2048 -nodes -keyout /dev/null -subj /CN=peer-user -out "$WORK/user.csr" 2>/dev/null

cat >"$WORK/openssl.cnf" <<EOF
openssl_conf = openssl_init
[openssl_init]
engines = engine_section
[engine_section]
pkcs11 = pkcs11_section
[pkcs11_section]
engine_id = pkcs11
dynamic_path = $ENGINE
MODULE_PATH = $MODULE
init = 0
[leaf]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
EOF

# OpenSSL: one process per certificate, WORKERS at a time, for DURATION seconds.
openssl_rate() {
  local algorithm=$1
  local key="pkcs11:token=peers;object=peers-$algorithm;type=private;pin-value=$PIN"
  local end=$((SECONDS + DURATION))
  for worker in $(seq 1 "$WORKERS"); do
    (
      count=0
      failed=0
      while [ $SECONDS -lt $end ]; do
        # SoftHSM rewrites its token file at every login, so concurrent processes sometimes fail
        # (even crash): only certificates that were written count.
        if OPENSSL_CONF=$WORK/openssl.cnf openssl x509 -req -in "$WORK/user.csr" -engine pkcs11 -CAkeyform engine \
          -CAkey "$key" -CA "$WORK/ca-$algorithm.pem" -set_serial "0x$(openssl rand -hex 16)" -days 365 \
          -extfile "$WORK/openssl.cnf" -extensions leaf -out "$WORK/openssl-$worker.pem" 2>/dev/null; then
          count=$((count + 1))
        else
          failed=$((failed + 1))
        fi
      done 2>/dev/null
      echo "$count $failed" >"$WORK/count-$worker"
    ) &
  done
  wait
  local total=0 failures=0
  for worker in $(seq 1 "$WORKERS"); do
    read -r count failed <"$WORK/count-$worker"
    total=$((total + count))
    failures=$((failures + failed))
  done
  [ "$failures" -eq 0 ] || echo "  ($failures OpenSSL runs failed or crashed and are not counted)" >&2
  # The last certificate must verify, or the rate means nothing.
  openssl verify -CAfile "$WORK/ca-$algorithm.pem" "$WORK/openssl-1.pem" >/dev/null
  awk -v total="$total" -v seconds="$DURATION" 'BEGIN { printf "%.0f", total / seconds }'
}

# cfssl: a software CA key of the same type, HTTP sign API, CLIENTS concurrent connections.
cfssl_rate() {
  local algorithm=$1 port=$2 key_json
  case $algorithm in
    ecdsa-p256) key_json='{"algo":"ecdsa","size":256}' ;;
    rsa-3072) key_json='{"algo":"rsa","size":3072}' ;;
  esac
  (cd "$WORK" && echo "{\"CN\":\"cfssl $algorithm\",\"key\":$key_json}" | cfssl gencert -initca - 2>/dev/null | cfssljson -bare "cfssl-$algorithm")
  echo '{"signing":{"default":{"expiry":"8760h","usages":["digital signature","key encipherment"]}}}' >"$WORK/cfssl-config.json"
  cfssl serve -address 127.0.0.1 -port "$port" -ca "$WORK/cfssl-$algorithm.pem" -ca-key "$WORK/cfssl-$algorithm-key.pem" \
    -config "$WORK/cfssl-config.json" >"$WORK/cfssl-$algorithm.log" 2>&1 &
  CFSSL_PID=$!
  for _ in $(seq 1 100); do curl -s -o /dev/null "http://127.0.0.1:$port/api/v1/cfssl/health" && break; sleep 0.1; done
  local csr_json
  csr_json=$(awk '{ printf "%s\\n", $0 }' "$WORK/user.csr")
  printf '{"certificate_request":"%s"}' "$csr_json" >"$WORK/body.json"
  cat >"$WORK/post.lua" <<EOF
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local body = io.open("$WORK/body.json", "rb")
wrk.body = body:read("*a")
body:close()
EOF
  # One request first: it must succeed.
  curl -s -X POST -H 'Content-Type: application/json' --data-binary "@$WORK/body.json" \
    "http://127.0.0.1:$port/api/v1/cfssl/sign" | grep -q '"success":true'
  wrk -t 2 -c "$CLIENTS" -d "${DURATION}s" -s "$WORK/post.lua" "http://127.0.0.1:$port/api/v1/cfssl/sign" >"$WORK/wrk-$algorithm.txt"
  kill "$CFSSL_PID" 2>/dev/null
  wait "$CFSSL_PID" 2>/dev/null || true
  CFSSL_PID=""
  if grep -q "Non-2xx" "$WORK/wrk-$algorithm.txt"; then
    echo "cfssl answered errors ($(grep Non-2xx "$WORK/wrk-$algorithm.txt" | tr -s ' ')): no valid rate" >&2
    echo "n/a"
    return
  fi
  awk '/Requests\/sec/ { printf "%.0f", $2 }' "$WORK/wrk-$algorithm.txt"
}

echo "peers, $DURATION s each, user CSR RSA-2048, $(nproc) cores ($(awk -F: '/model name/ { print $2; exit }' /proc/cpuinfo | sed 's/^ //'))"
port=18890
for algorithm in ecdsa-p256 rsa-3072; do
  echo "CA key $algorithm:"
  echo "  OpenSSL x509 -req through SoftHSM (PKCS#11 engine), $WORKERS workers: $(openssl_rate "$algorithm") certificates/s"
  echo "  cfssl serve, software key, $CLIENTS clients: $(cfssl_rate "$algorithm" "$port") certificates/s"
  port=$((port + 1))
done
