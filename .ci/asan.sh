#!/usr/bin/env bash
# AddressSanitizer over the Rust tests, the kernel stress test (tests/kernel_stress.rs) included
# with more rounds: any out-of-bounds or use-after-free access a test reaches is a report, and any
# report fails CI. Stable rustc takes -Zsanitizer with RUSTC_BOOTSTRAP=1, and the toolchain ships
# the ASan runtime. --target keeps build scripts and proc-macros (run on the host) uninstrumented.
set -euo pipefail
cd "$(dirname "$0")/.."

target="$(rustc -vV | sed -n 's/^host: //p')"
log="$(mktemp -d)"
trap 'rm -rf "$log"' EXIT

export RUSTC_BOOTSTRAP=1
export RUSTFLAGS="-Zsanitizer=address -Cforce-frame-pointers=yes"
export CARGO_TARGET_DIR="target/asan"
# Reports go to files (printed below), so that a report in a test whose output cargo hides still
# fails the run.
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:log_path=$log/asan"
export MOEROUTE_STRESS_ROUNDS="${MOEROUTE_STRESS_ROUNDS:-3000}"

echo "== ASan: cargo test (target $target, $MOEROUTE_STRESS_ROUNDS stress rounds)"
start=$SECONDS
# Library unit tests and the integration tests (doctests are not built with the sanitizer).
status=0
cargo test --target "$target" --lib --tests --no-fail-fast || status=$?
if compgen -G "$log/asan*" >/dev/null; then
    echo "== ASan reports:" >&2
    cat "$log"/asan* >&2
    exit 1
fi
if [ "$status" -ne 0 ]; then
    echo "== ASan: cargo test failed (status $status) without a report" >&2
    exit "$status"
fi
echo "== ASan: no reports ($((SECONDS - start)) s)"
