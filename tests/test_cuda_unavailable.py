"""Without an NVIDIA driver, importing moeroute and every CPU op work, and a CUDA op raises
CudaError (never a panic, never a touch of the pointers it was given)."""

import types

import numpy as np
import pytest

import moeroute
from moeroute import _core

pytestmark = pytest.mark.skipif(moeroute.cuda_available(), reason="an NVIDIA driver is present")


def test_cuda_available_is_false_without_a_driver():
    assert moeroute.cuda_available() is False


def test_cuda_init_raises_a_clear_error():
    with pytest.raises(moeroute.CudaError, match="no NVIDIA driver found"):
        _core.cuda_init(0)
    assert issubclass(moeroute.CudaError, RuntimeError)


# route's options, read by attribute by cuda_route (as moeroute.options.RouteOptions has them).
OPTIONS = types.SimpleNamespace(k=2, score="softmax", normalize="topk", scale=1.0, num_groups=None, topk_groups=None,
                                capacity=None, capacity_factor=None, min_capacity=0, capacity_multiple=1,
                                priority="slot", pad_to=1)


@pytest.mark.parametrize("call", [
    lambda: _core.cuda_permute(0, 0, "float32", 16, 4, 8, 32, 48, 4),
    lambda: _core.cuda_combine(0, 0, "bfloat16", 16, 4, 8, 32, 2, 40, 48, 2),
    lambda: _core.cuda_permute_backward(0, 0, "bfloat16", 16, 4, 8, 32, 2, 48, 2),
    lambda: _core.cuda_combine_backward(0, 0, "float32", 16, 2, 32, 4, 8, 48, 64, 2, 80, 96, 112),
    lambda: _core.cuda_route_backward(0, 0, "float32", 2, 4, 2, 16, None, 32, 48, 64, "softmax", "topk", 1.0, 80),
    lambda: _core.cuda_route_backward(0, 0, "float64", 2, 4, 2, 16, 24, 32, 48, 64, "sigmoid", "kept", 2.0, 80),
    lambda: _core.cuda_route(0, 0, 16, "float32", 4, 8, OPTIONS, None, (1, 2, 3, 4, 5, 6, 7, 8), 64, 1 << 20),
    lambda: _core.cuda_route(0, 0, 16, "float32", 4, 8, OPTIONS, 24, (1, 2, 3, 4, 5, 6, 7, 8), 64, 1 << 20),
    lambda: _core.cuda_expert_choice(0, 0, 16, "float32", 4, 8, None, 1.0, (1, 2, 3, 4, 5, 6, 7, 8), 64, 1 << 20),
])
def test_every_cuda_entry_point_raises_cuda_error(call):
    # Fake device pointers: the driver check comes before any of them is used.
    with pytest.raises(moeroute.CudaError, match="no NVIDIA driver"):
        call()


def test_workspace_sizes_need_no_driver():
    # Pure arithmetic on the host: it works without a driver (the CUDA front sizes its buffers with it).
    assert _core.cuda_route_workspace("float32", 64, 8, 2, None) >= 256
    assert _core.cuda_expert_choice_workspace("float32", 64, 8) >= 64 * 8 * 4


def test_cpu_ops_still_work():
    logits = np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32)
    plan = moeroute.route(logits, 2, capacity_factor=1.0)
    y = moeroute.combine(moeroute.permute(np.ones((6, 3), np.float32), plan), plan)
    assert y.shape == (6, 3)
