"""The package's layering (ARCHITECTURE.md): the NumPy and torch fronts never import each other, only
the dispatch layer knows both, and the NumPy front runs in a process where torch cannot load."""

import ast
import pathlib
import subprocess
import sys

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "python" / "moeroute"


def _type_checking_only(tree):
    """The statements under `if TYPE_CHECKING:` (imports for type annotations, never run)."""
    return {id(inner) for node in ast.walk(tree)
            if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"
            for statement in node.body for inner in ast.walk(statement)}


def imported_modules(path):
    """The absolute names of the modules a file of the package imports when it runs (imports under
    `if TYPE_CHECKING:`, for type checkers only, do not count)."""
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = parts[:-1] if parts[-1] != "__init__" else parts[:-1]
    names = set()
    tree = ast.parse(path.read_text())
    skipped = _type_checking_only(tree)
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def package_files(sub):
    return sorted((PACKAGE / sub).glob("*.py")) if sub else sorted(PACKAGE.glob("*.py"))


def touches(names, module):
    return any(n == module or n.startswith(module + ".") for n in names)


@pytest.mark.parametrize("path", package_files("numpy"), ids=lambda p: p.name)
def test_numpy_front_imports_no_torch(path):
    names = imported_modules(path)
    assert not touches(names, "torch") and not touches(names, "moeroute.torch"), names
    assert not touches(names, "moeroute._dispatch"), names


@pytest.mark.parametrize("path", package_files("torch"), ids=lambda p: p.name)
def test_torch_front_imports_no_numpy_front(path):
    names = imported_modules(path)
    assert not touches(names, "moeroute.numpy") and not touches(names, "moeroute._dispatch"), names


@pytest.mark.parametrize("path", package_files(""), ids=lambda p: p.name)
def test_only_the_dispatch_layer_knows_both_fronts(path):
    names = imported_modules(path)
    if path.name in ("_dispatch.py", "_demo.py", "__main__.py"):
        return  # the dispatch layer; the demo is a torch program
    both = touches(names, "moeroute.numpy") and touches(names, "moeroute.torch")
    assert not both, names
    assert not touches(names, "moeroute.torch") and not touches(names, "torch"), names


def test_numpy_front_runs_without_torch():
    """With torch unimportable, the NumPy pipeline and the top-level functions work on arrays."""
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import numpy as np, moeroute, moeroute.numpy as mn\n"
        "logits = np.random.default_rng(0).standard_normal((16, 4)).astype(np.float32)\n"
        "plan = moeroute.route(logits, 2, capacity_factor=1.0)\n"
        "y = mn.combine(mn.permute(np.ones((16, 3), np.float32), plan), plan)\n"
        "assert y.shape == (16, 3) and moeroute.losses.load_balancing_loss(plan) > 0\n"
        "assert 'moeroute.torch' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_importing_the_torch_front_does_not_import_dynamo():
    """moeroute.torch marks its compile-time constants without importing torch._dynamo (seconds)."""
    pytest.importorskip("torch")
    code = "import sys, moeroute.torch; assert 'torch._dynamo' not in sys.modules, 'torch._dynamo imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
