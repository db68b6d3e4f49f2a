"""The published types stay true: mypy --strict passes on the package and on the README's and the
docstrings' examples (.ci/mypy.sh, as CI runs it), NumPy data type as NumPy results and tensors as
tensors, and the typed signatures of `route` match RouteOptions'."""

import importlib.util
import inspect
import pathlib
import subprocess
import sys
import textwrap

import pytest

from moeroute.options import DispatchRoute, RouteFunction, RouteOptions

ROOT = pathlib.Path(__file__).resolve().parents[1]
# (mypy reads torch's and matplotlib's own annotations: without them it would report missing modules.)
needs_mypy = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("mypy", "torch", "matplotlib")),
    reason="mypy, torch or matplotlib is not installed (pip install '.[test]')")


def _mypy(*args):
    """Runs mypy from the repository root (pyproject.toml's [tool.mypy]; its cache makes reruns fast)."""
    return subprocess.run([sys.executable, "-m", "mypy", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)


@needs_mypy
def test_mypy_strict_package_readme_and_docstring_examples():
    result = subprocess.run(["bash", str(ROOT / ".ci" / "mypy.sh")], cwd=ROOT, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr


# What a type checker must infer (assert_type fails on Any too): each kind of data gives its own kind.
ASSERTIONS = '''
from typing import Any, Tuple

import numpy as np
import torch
from numpy.typing import NDArray
from typing_extensions import assert_type

import moeroute
import moeroute.numpy
import moeroute.torch
from moeroute import RoutingPlan

a = np.zeros((4, 3), np.float32)
plan = moeroute.route(a, 2, capacity_factor=1.25)
assert_type(plan, RoutingPlan[NDArray[Any]])
assert_type(plan.expert_offsets, NDArray[Any])
assert_type(plan.capacity, "int | None")
assert_type(moeroute.permute(a, plan), NDArray[Any])
assert_type(moeroute.combine(a, plan), NDArray[Any])
assert_type(moeroute.combine_backward(a, a, plan), Tuple[NDArray[Any], NDArray[Any]])
assert_type(moeroute.route_backward(a, plan, a), NDArray[Any])
assert_type(moeroute.losses.load_balancing_loss(plan), float)
assert_type(moeroute.losses.z_loss(a), float)
assert_type(moeroute.expert_choice(a), RoutingPlan[NDArray[Any]])
assert_type(moeroute.route_with_options(a, moeroute.RouteOptions(2)), RoutingPlan[NDArray[Any]])
assert_type(moeroute.numpy.route(a, 2), RoutingPlan[NDArray[Any]])
assert_type(plan.numpy(), RoutingPlan[NDArray[Any]])

t = torch.zeros(4, 3)
tplan = moeroute.route(t, 2)
assert_type(tplan, RoutingPlan[torch.Tensor])
assert_type(tplan.weights, torch.Tensor)
assert_type(moeroute.permute(t, tplan), torch.Tensor)
assert_type(moeroute.combine(t, tplan), torch.Tensor)
assert_type(moeroute.permute_backward(t, tplan), torch.Tensor)
assert_type(moeroute.combine_backward(t, t, tplan), Tuple[torch.Tensor, torch.Tensor])
assert_type(moeroute.losses.load_balancing_loss(tplan), torch.Tensor)
assert_type(moeroute.losses.noisy_load_loss(t, 1.0, t, 2), torch.Tensor)
assert_type(moeroute.torch.route(t, 2), RoutingPlan[torch.Tensor])
assert_type(moeroute.torch.plan_as_tensors(plan), RoutingPlan[torch.Tensor])
assert_type(moeroute.torch.MoE(8, 4).plan(t), RoutingPlan[torch.Tensor])
assert_type(moeroute.torch.MoE(8, 4)(t), torch.Tensor)

moeroute.permute(a, tplan)  # E: a NumPy array with a tensor plan
moeroute.numpy.route(t, 2)  # E: a tensor to the NumPy front
'''


@needs_mypy
def test_numpy_gives_numpy_and_tensors_give_tensors(tmp_path):
    package = tmp_path / "moeroute_examples"  # (pyproject.toml's overrides: as the README examples)
    package.mkdir()
    (package / "__init__.py").write_text("")
    source = textwrap.dedent(ASSERTIONS)
    (package / "type_assertions.py").write_text(source)
    result = _mypy(str(package))
    errors = [line for line in result.stdout.splitlines() if ": error:" in line]
    lines = source.splitlines()
    expected = {i + 1 for i, line in enumerate(lines) if "  # E: " in line}  # (the lines that must fail)
    got = {int(line.split(":")[1]) for line in errors}
    assert got == expected, result.stdout


def test_route_protocols_have_route_options_parameters():
    """The typed signatures of route (RouteFunction, DispatchRoute) are written out in options.py:
    they must stay RouteOptions' (names, kinds, defaults) after `logits`."""
    want = [(p.name, p.kind, p.default) for p in inspect.signature(RouteOptions).parameters.values()]
    for protocol in (RouteFunction, DispatchRoute):
        params = list(inspect.signature(protocol.__call__).parameters.values())
        assert [p.name for p in params[:2]] == ["self", "logits"]
        assert [(p.name, p.kind, p.default) for p in params[2:]] == want, protocol.__name__
