#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit tests, and the privileged multi-host lab tests
# (run as root: they create network namespaces). This is what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."

bash deploy/install-deps.sh

# A failing test's error (anyhow) is printed without a backtrace, so the message is the last
# thing of its output; panics keep theirs (RUST_BACKTRACE).
export RUST_LIB_BACKTRACE=0

start=$(date +%s)
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
# The lab tests start the real binary.
cargo build --bin shoal

cleanup() {
  # Labs of tests that were killed before their teardown ran (prefix zt*, see tests/src/lib.rs).
  for d in /run/shoal-lab/zt*; do
    [ -d "$d" ] && target/debug/shoal lab down --prefix "$(basename "$d")" >/dev/null 2>&1 || true
  done
}
trap cleanup EXIT

if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace
else
  cargo test --workspace
fi
echo "test suite took $(( $(date +%s) - start ))s"
