#!/usr/bin/env bash
# CI: differential fuzzing at scale — every op's property tests against the NumPy reference with
# hypothesis's `thorough` profile (1,000 examples per property instead of 60: shapes, options,
# dtypes, ties and ±inf drawn together; ~29,000 examples, a few minutes). For a longer local run,
# repeat it with other seeds (HYPOTHESIS_SEED=N bash .ci/fuzz.sh) or raise the profile's
# max_examples in tests/conftest.py.
set -euo pipefail
cd "$(dirname "$0")/.."
log="$(mktemp)"
seed=()
if [ -n "${HYPOTHESIS_SEED:-}" ]; then seed=(--hypothesis-seed="$HYPOTHESIS_SEED"); fi
if ! HYPOTHESIS_PROFILE=thorough python -m pytest -q -p no:cacheprovider --hypothesis-show-statistics "${seed[@]}" \
        tests/test_route.py tests/test_expert_choice.py tests/test_permute_combine.py tests/test_backward.py \
        tests/test_losses.py tests/test_checked_mode.py tests/test_plan_from_topk.py > "$log" 2>&1; then
    cat "$log"
    exit 1
fi
# hypothesis's statistics: "- 1000 passing, 0 failing, and 81 invalid test cases" per phase
examples=$(awk '/^ +- [0-9]+ passing/ {n += $2} END {print n + 0}' "$log")
properties=$(awk '/^tests\/.*::.*:$/ {n += 1} END {print n + 0}' "$log")
grep -E "[0-9]+ passed" "$log" | tail -n 1 || true
echo "fuzz: $examples passing examples of $properties properties, all agreeing with the reference"
rm -f "$log"
