#!/usr/bin/env bash
# CI: the published types stay true. mypy --strict on the package (pyproject.toml's [tool.mypy] says
# which private modules are relaxed and why) and, as user code, on the README's python blocks and the
# docstring examples, extracted to a temporary package (moeroute_examples): strict too, except that
# calls into torch's own unannotated functions (e.g. Tensor.backward) are allowed there.
set -euo pipefail
cd "$(dirname "$0")/.."

examples=$(mktemp -d)
trap 'rm -rf "$examples"' EXIT
python .ci/mypy_examples.py "$examples"
python -m mypy python/moeroute "$examples/moeroute_examples"
