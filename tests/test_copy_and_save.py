"""Every public object copies, deep-copies, pickles (every protocol) and saves, and comes back equal,
in its framework and on its device: RoutingPlan (NumPy and torch), RouteOptions, the MoE layer
(after forward and after backward), RoutingStats and the exceptions."""

import copy
import io
import pickle

import numpy as np
import pytest

import moeroute
from moeroute import RouteOptions, RoutingPlan
from moeroute.plan import FIELD_NAMES

LOGITS = np.random.default_rng(5).standard_normal((9, 5)).astype(np.float32)


def assert_same_plan(got, want):
    assert type(got.src) is type(want.src)
    for name in FIELD_NAMES:
        a, b = getattr(got, name), getattr(want, name)
        if not isinstance(a, np.ndarray):
            assert a.device == b.device, name
            a, b = a.detach().cpu().numpy(), b.detach().cpu().numpy()
        np.testing.assert_array_equal(a, b, err_msg=name)
    assert (got.capacity, got.score, got.normalize, got.scale) == (want.capacity, want.score, want.normalize,
                                                                    want.scale)


def plans():
    yield moeroute.route(LOGITS, 2, capacity=3, normalize="kept", scale=1.5)
    yield moeroute.expert_choice(LOGITS, capacity=2)
    torch = pytest.importorskip("torch")
    yield moeroute.route(torch.tensor(LOGITS, requires_grad=True), 2, capacity_factor=1.0)
    yield moeroute.route(torch.tensor(LOGITS, dtype=torch.float64), 3)


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_plans_pickle(protocol):
    for plan in plans():
        assert_same_plan(pickle.loads(pickle.dumps(plan, protocol=protocol)), plan)


def test_plans_copy_and_deepcopy():
    for plan in plans():
        assert copy.copy(plan) is plan  # immutable
        twin = copy.deepcopy(plan)
        assert_same_plan(twin, plan)
        if isinstance(plan.src, np.ndarray):
            assert not np.shares_memory(twin.src, plan.src) and not twin.src.flags.writeable
        else:
            assert twin.src.data_ptr() != plan.src.data_ptr() and not twin.weights.requires_grad


def test_plans_save_and_load(tmp_path):
    for i, plan in enumerate(plans()):
        path = tmp_path / f"plan{i}.npz"
        plan.save(path)
        assert_same_plan(RoutingPlan.load(path), plan)
        assert_same_plan(RoutingPlan.from_dict(plan.to_dict()), plan)


def test_torch_plans_torch_save_and_load_with_weights_only():
    torch = pytest.importorskip("torch")
    for plan in list(plans())[2:]:
        buffer = io.BytesIO()
        torch.save({"plan": plan, "options": RouteOptions(2, capacity_factor=1.5)}, buffer)
        buffer.seek(0)
        loaded = torch.load(buffer, weights_only=True)
        assert_same_plan(loaded["plan"], plan)
        assert loaded["options"] == RouteOptions(2, capacity_factor=1.5)


def test_unpickled_plans_are_validated():
    plan = moeroute.route(LOGITS, 2, capacity=3)
    reduced = plan.__reduce__()
    arrays = list(reduced[1][0])
    arrays[FIELD_NAMES.index("dest")] = np.full_like(plan.dest, 99)
    with pytest.raises(moeroute.PlanError, match="dest"):
        reduced[0](tuple(arrays), *reduced[1][1:])


def test_numpy_plan_loads_onto_a_torch_device(tmp_path):
    torch = pytest.importorskip("torch")
    plan = moeroute.route(LOGITS, 2)
    plan.save(tmp_path / "plan.npz")
    moved = RoutingPlan.load(tmp_path / "plan.npz", device="cpu")
    assert isinstance(moved.src, torch.Tensor) and moved.src.device.type == "cpu"


def test_route_options_round_trip():
    options = RouteOptions(2, score="sigmoid", capacity=4, bias=[0.0, 0.5, 0.0, 0.0, -0.5])
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        assert pickle.loads(pickle.dumps(options, protocol=protocol)) == options
    assert copy.copy(options) == options and copy.deepcopy(options) == options


def test_moe_layer_deepcopies_and_pickles_after_forward_and_backward():
    torch = pytest.importorskip("torch")
    from moeroute.torch import MoE, RoutingStats

    torch.manual_seed(0)
    layer = MoE(8, 4, 2, ffn_size=16, capacity_factor=1.5, load_balancing_coef=0.01, z_loss_coef=1e-3)
    x = torch.randn(3, 5, 8)
    out = layer(x)
    for stage in ("after forward", "after backward"):
        for twin in (copy.deepcopy(layer), pickle.loads(pickle.dumps(layer))):
            assert all(torch.equal(a, b) for a, b in zip(twin.state_dict().values(), layer.state_dict().values()))
            torch.testing.assert_close(twin(x), layer(x), rtol=0, atol=0)
            assert torch.equal(twin.stats.tokens_per_expert, layer.stats.tokens_per_expert), stage
        if stage == "after forward":
            (out.square().mean() + layer.aux_loss).backward()
    stats = copy.deepcopy(layer.stats)
    assert isinstance(stats, RoutingStats) and torch.equal(stats.tokens_per_expert, layer.stats.tokens_per_expert)


@pytest.mark.parametrize("error", [moeroute.ShapeError, moeroute.DTypeError, moeroute.ArgumentError,
                                   moeroute.LogitsError, moeroute.PlanError, moeroute.IndexOverflowError,
                                   moeroute.CudaError])
def test_errors_pickle(error):
    twin = pickle.loads(pickle.dumps(error("x: got 1, expected 2")))
    assert type(twin) is error and str(twin) == "x: got 1, expected 2"
