#!/usr/bin/env bash
# Quick start, command 2: run the whole test suite.
#
# Installs what a fresh Debian/Ubuntu machine lacks (SoftHSM2, PostgreSQL, a C compiler, and pkilint
# in a virtual environment), starts PostgreSQL on 127.0.0.1:5432 if it is not running, makes a test
# role that can create databases, then checks formatting and lints and runs every test of the
# workspace. Each test provisions its own SoftHSM token directory and its own database; nothing
# shared is touched.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
as_postgres() { if [ "$(id -u)" = 0 ]; then su postgres -c "$*"; else sudo -u postgres sh -c "$*"; fi; }

missing=()
command -v softhsm2-util >/dev/null || missing+=(softhsm2)
command -v pg_ctlcluster >/dev/null || missing+=(postgresql)
command -v cc >/dev/null || missing+=(gcc libc6-dev)
command -v openssl >/dev/null || missing+=(openssl)
command -v python3 >/dev/null || missing+=(python3 python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
  step "installing ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

PG_HOST=127.0.0.1
PG_PORT=5432
if ! pg_isready -q -h "$PG_HOST" -p "$PG_PORT"; then
  step "starting PostgreSQL"
  version=$(ls /etc/postgresql | sort -V | tail -n 1)
  as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start
  for _ in $(seq 1 100); do pg_isready -q -h "$PG_HOST" -p "$PG_PORT" && break; sleep 0.1; done
  pg_isready -h "$PG_HOST" -p "$PG_PORT"
fi

# A role with a password works whether 127.0.0.1 uses trust (CI) or scram (a fresh install).
if [ -z "${E2EE_CA_TEST_POSTGRES_URL:-}" ]; then
  as_postgres "psql -q -v ON_ERROR_STOP=1 -c \"DO \\\$\\\$ BEGIN
      IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'e2ee_ca_test') THEN
        CREATE ROLE e2ee_ca_test LOGIN CREATEDB PASSWORD 'e2ee_ca_test';
      END IF; END \\\$\\\$;\"" >/dev/null
  export E2EE_CA_TEST_POSTGRES_URL="postgres://e2ee_ca_test:e2ee_ca_test@$PG_HOST:$PG_PORT/postgres"
fi

# tests/profile_lint.rs reads the CA's certificates with Python's cryptography and lints them with pkilint,
# from a virtual environment in the target directory (where the test looks for it).
lint_venv="${CARGO_TARGET_DIR:-target}/lint-venv"
if [ ! -x "$lint_venv/bin/python3" ]; then
  step "making $lint_venv (pkilint, cryptography)"
  mkdir -p "$(dirname "$lint_venv")"
  if ! python3 -m venv "$lint_venv" 2>/dev/null; then
    rm -rf "$lint_venv"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    python3 -m venv "$lint_venv"
  fi
fi
"$lint_venv/bin/python3" -m pip install -q --disable-pip-version-check -r tests/testdata/lint-requirements.txt
E2EE_CA_TEST_PYTHON="$(cd "$lint_venv" && pwd)/bin/python3"
export E2EE_CA_TEST_PYTHON

step "cargo fmt --check"
cargo fmt --all -- --check
step "cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings
step "cargo build (binaries and the fault-injecting PKCS#11 module the tests load)"
cargo build --workspace --quiet
step "cargo test"
cargo test --workspace
