#!/usr/bin/env bash
# Runs every benchmark in one go (bounded: about 15 minutes on 2 cores) and rewrites the generated
# part of BENCHMARKS.md (between the `generated` markers) with the numbers, the ratios and the machine.
# The block keeps each bench's summary lines only, so that the page stays short; the full output is
# what this script prints.
# Usage: ca-service/benches/run.sh [SECONDS] [CLIENTS]   (defaults 8 16)
set -euo pipefail
cd "$(dirname "$0")/../.."
SECONDS_EACH=${1:-8}
CLIENTS=${2:-16}
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

if ! pg_isready -q -h 127.0.0.1 -p 5432; then
  echo "run.sh: PostgreSQL is not running on 127.0.0.1:5432 (tests/run.sh starts it)" >&2
  exit 1
fi
export E2EE_CA_TEST_POSTGRES_URL=${E2EE_CA_TEST_POSTGRES_URL:-postgres://e2ee_ca_test:e2ee_ca_test@127.0.0.1:5432/postgres}

echo "== issuance scenarios"
BENCH_MARKDOWN="$OUT/issuance.md" cargo bench --quiet -p ca-service --bench issuance -- "$SECONDS_EACH" "$CLIENTS" 512 1000000 | tee "$OUT/issuance.txt"
echo "== embedded store next to PostgreSQL"
cargo bench --quiet -p ca-service --bench stores -- "$SECONDS_EACH" "$CLIENTS" | tee "$OUT/stores.txt"
echo "== audit log (append, sequencing, commit to checkpoint, offline recomputation)"
for writers in 8 32; do
  cargo bench --quiet -p ca-service --bench audit_log -- "$SECONDS_EACH" "$writers" | tee "$OUT/audit_log_$writers.txt"
done
echo "== CRL signer (100,000 entries next to 1,000)"
cargo bench --quiet -p ca-service --bench crl | tee "$OUT/crl.txt"
echo "== Admin lookups (1,000,000 identities next to 1,000)"
cargo bench --quiet -p ca-service --bench admin_lookups | tee "$OUT/admin_lookups.txt"
echo "== client file crypto and folder opening"
cargo bench --quiet -p e2ee-client --bench throughput | tee "$OUT/client.txt"
echo "== peers"
ca-service/benches/peers.sh "$SECONDS_EACH" "$CLIENTS" 2 2>&1 | tee "$OUT/peers.txt"

{
  echo "<!-- generated:begin (ca-service/benches/run.sh $SECONDS_EACH $CLIENTS) -->"
  echo "Measured $(date -u '+%Y-%m-%d %H:%M UTC') on $(nproc) cores ($(awk -F: '/model name/ { print $2; exit }' /proc/cpuinfo | sed 's/^ //')), $(free -g | awk '/Mem:/ { print $2 }') GiB, load average before the run: $(cut -d' ' -f1-3 /proc/loadavg)."
  echo
  cat "$OUT/issuance.md"
  echo
  echo '```text'
  grep -E "with [0-9]+ identities" "$OUT/issuance.txt" || true
  grep -E "certificates/s|PostgreSQL floor" "$OUT/stores.txt" || true
  cat "$OUT/peers.txt"
  echo '```'
  echo
  echo '```text'
  for writers in 8 32; do
    grep -E "^settings:|^(PostgreSQL|embedded SQLite):|mixed:|commit to signed checkpoint:" "$OUT/audit_log_$writers.txt" || true
  done
  grep -E "^offline recomputation" "$OUT/audit_log_32.txt" || true
  echo '```'
  echo
  echo '```text'
  grep -E "^CRL " "$OUT/crl.txt" || true
  grep -E " at [0-9]+ identities:" "$OUT/admin_lookups.txt" || true
  echo '```'
  echo
  echo '```text'
  grep -E "^(file crypto|open a folder)|raw AES|client (en|de)crypt \(" "$OUT/client.txt" || true
  echo '```'
  echo "<!-- generated:end -->"
} >"$OUT/generated.md"

python3 - "$OUT/generated.md" <<'PY'
import re, sys
generated = open(sys.argv[1]).read().rstrip("\n")
text = open("BENCHMARKS.md").read()
pattern = re.compile(r"<!-- generated:begin.*?<!-- generated:end -->", re.S)
if pattern.search(text):
    text = pattern.sub(lambda _: generated, text)
else:
    text = text.rstrip("\n") + "\n\n## Latest run\n\n" + generated + "\n"
open("BENCHMARKS.md", "w").write(text)
PY
echo "BENCHMARKS.md updated"
