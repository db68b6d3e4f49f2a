#!/usr/bin/env bash
# CI: executes examples/quickstart.ipynb headless (nbclient, a fresh ipykernel) so it never goes
# stale; fails on any cell error, or if the plan / stats HTML display or the figures are missing.
# Expects moeroute installed already (.ci/run installs it); installs the `notebook` extra's
# dependencies, read from pyproject.toml, without reinstalling (rebuilding) moeroute itself.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== Quickstart notebook (examples/quickstart.ipynb, headless)"

python - <<'PY' > /tmp/moeroute-notebook-requirements.txt
import re
text = open("pyproject.toml", encoding="utf-8").read()
extra = re.search(r'^notebook\s*=\s*\[(.*?)\]', text, re.M | re.S).group(1)
print("\n".join(re.findall(r'"([^"]+)"', extra)))
PY
python -m pip install -q -r /tmp/moeroute-notebook-requirements.txt

python - <<'PY'
import sys, tempfile, time

import nbclient
import nbformat

path = "examples/quickstart.ipynb"
nb = nbformat.read(path, as_version=4)
started = time.perf_counter()
with tempfile.TemporaryDirectory() as cwd:  # the notebook's working directory: writes nothing here
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3", allow_errors=False,
                                     resources={"metadata": {"path": cwd}})
    client.execute()  # raises CellExecutionError (with the cell and traceback) on any error
outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
html = [o["data"]["text/html"] for o in outputs if "text/html" in o.get("data", {})]
pngs = [o for o in outputs if "image/png" in o.get("data", {})]
checks = {
    "the RoutingPlan HTML display": any("RoutingPlan" in h and "<svg" in h for h in html),
    "the RoutingStats HTML display": any("RoutingStats" in h and "<svg" in h for h in html),
    "a moeroute.plot figure": len(pngs) >= 2,
}
missing = [name for name, ok in checks.items() if not ok]
if missing:
    sys.exit(f"{path}: ran, but its outputs lack {', '.join(missing)}")
cells = sum(cell.cell_type == "code" for cell in nb.cells)
print(f"{path}: {cells} code cells ran without error in {time.perf_counter() - started:.1f} s "
      f"({len(html)} HTML displays, {len(pngs)} figures)")
PY
