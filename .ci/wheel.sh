#!/usr/bin/env bash
# CI: builds the release wheel as README's "Release wheel" says (manylinux2014 through zig, stripped,
# with the licence), checks it is all three, installs it into a fresh virtual environment with
# nothing else of the project, and runs the NumPy walk-through there.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet --disable-pip-version-check "maturin>=1.5,<2" ziglang
out="$(mktemp -d)"
maturin build --release --zig --compatibility manylinux2014 --strip --out "$out" 2>&1 | tail -n 2
wheel="$(ls "$out"/moeroute-*.whl)"
echo "built $(basename "$wheel") ($(du -h "$wheel" | cut -f1))"
case "$(basename "$wheel")" in *manylinux*) ;; *) echo "not a manylinux wheel"; exit 1 ;; esac
python - "$wheel" <<'PY'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), "no LICENSE in the wheel"
so = next(n for n in names if n.endswith(".so"))
data = zipfile.ZipFile(sys.argv[1]).read(so)
assert b".symtab" not in data, f"{so} is not stripped"
print(f"wheel ok: LICENSE included, {so} stripped ({len(data) // 1024} KiB)")
PY
venv="$(mktemp -d)/venv"
python -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$wheel"
(cd "$(mktemp -d)" && "$venv/bin/python" -m moeroute --tokens 2048 --hidden 128 --experts 16 | tail -n 1)
rm -rf "$out" "$(dirname "$venv")"
