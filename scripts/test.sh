#!/usr/bin/env bash
# Run every test st2kv has: formatting, lints, unit tests, the storage conformance suite and the
# cluster scenarios (real node processes, our CLI and the real StackStorm `st2` CLI).
# Installs what it needs on first run: a virtualenv with st2client==3.9.0 under target/.
set -euo pipefail
cd "$(dirname "$0")/.."

venv="${ST2_VENV:-$PWD/target/st2venv}"
if [ ! -x "$venv/bin/st2" ]; then
  echo "== installing the real StackStorm CLI (st2client 3.9.0) into $venv"
  if ! python3 -m venv "$venv" >/dev/null 2>&1; then
    # Debian ships venv separately.
    apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
    python3 -m venv "$venv"
  fi
  "$venv/bin/pip" install -q st2client==3.9.0 -c scripts/st2-constraints.txt
fi
export ST2_BIN="$venv/bin/st2"
"$ST2_BIN" --version

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "== build the binaries the scenarios run"
cargo build --workspace --bins
if docker info >/dev/null 2>&1; then
  # The FROM scratch image and deploy/secrets for tests/tests/compose.rs (skipped without Docker,
  # except under CI, where it then fails).
  echo "== Docker image (scripts/docker-build.sh)"
  scripts/docker-build.sh
  export ST2KV_COMPOSE=1
else
  echo "== Docker does not answer: the compose scenario will be skipped"
fi
echo "== tests"
cargo test --workspace -- --test-threads=2
