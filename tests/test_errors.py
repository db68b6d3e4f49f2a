"""Bad inputs raise the documented exception class with a message naming the argument; inputs are
never modified."""

import re

import ml_dtypes
import numpy as np
import pytest

import moeroute
from conftest import FLOAT_DTYPES
from moeroute import (ArgumentError, DTypeError, IndexOverflowError, LogitsError, MoerouteError, PlanError,
                      RoutingPlan, ShapeError, losses)

LOGITS = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
PLAN = moeroute.route(LOGITS, 2, capacity=2)
X = np.ones((5, 3), np.float32)
YP = np.ones((PLAN.num_rows, 3), np.float32)


def raises(error, names, fn, *args, **kwargs):
    """fn(*args, **kwargs) raises `error` whose message names the argument (one of `names`, as a word)."""
    with pytest.raises(error) as info:
        fn(*args, **kwargs)
    assert isinstance(info.value, MoerouteError)
    message = str(info.value)
    names = [names] if isinstance(names, str) else names
    assert any(re.search(rf"(?<![A-Za-z0-9_]){re.escape(n)}(?![A-Za-z0-9_])", message) for n in names), message


def test_exception_hierarchy():
    assert issubclass(ShapeError, ValueError) and issubclass(DTypeError, TypeError)
    assert issubclass(ArgumentError, ValueError) and issubclass(LogitsError, ArgumentError)
    assert issubclass(PlanError, ValueError) and issubclass(IndexOverflowError, ValueError)
    for cls in (ShapeError, DTypeError, ArgumentError, PlanError, IndexOverflowError):
        assert issubclass(cls, MoerouteError)


# --- logits ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(4,), (2, 3, 4), ()])
def test_logits_rank(shape):
    raises(ShapeError, "logits", moeroute.route, np.zeros(shape, np.float32), 1)
    raises(ShapeError, "logits", moeroute.expert_choice, np.zeros(shape, np.float32))


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.bool_, np.complex64, np.uint8])
def test_logits_dtype(dtype):
    raises(DTypeError, "logits", moeroute.route, np.zeros((3, 4), dtype), 1)
    raises(DTypeError, "logits", moeroute.expert_choice, np.zeros((3, 4), dtype))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_nan_logits(dtype):
    logits = LOGITS.astype(dtype)
    logits[3, 2] = np.nan
    raises(LogitsError, "logits", moeroute.route, logits, 2)
    raises(LogitsError, "logits", moeroute.route, logits, 2, score="sigmoid")
    raises(LogitsError, "logits", moeroute.expert_choice, logits)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_all_minus_inf_row(dtype):
    logits = LOGITS.astype(dtype)
    logits[1] = -np.inf
    raises(LogitsError, "logits", moeroute.route, logits, 2)
    raises(LogitsError, "logits", moeroute.route, logits, 2, score="sigmoid")
    raises(LogitsError, "logits", moeroute.expert_choice, logits)


# --- route options ---------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [0, -1, 5])
def test_k_out_of_range(k):
    raises(ArgumentError, "k", moeroute.route, LOGITS, k)


@pytest.mark.parametrize("k", [2.0, 2.5, True, "2", None])
def test_k_wrong_type(k):
    raises(DTypeError, "k", moeroute.route, LOGITS, k)


@pytest.mark.parametrize("name, value", [
    ("capacity", -1), ("capacity_factor", 0.0), ("capacity_factor", -1.0), ("capacity_factor", np.nan),
    ("capacity_factor", np.inf), ("min_capacity", -1), ("capacity_multiple", 0), ("pad_to", 0),
    ("scale", np.nan), ("scale", np.inf), ("score", "relu"), ("normalize", "sum"), ("priority", "random"),
])
def test_bad_option(name, value):
    raises(ArgumentError, name, moeroute.route, LOGITS, 2, **{name: value})


def test_capacity_and_capacity_factor_together():
    raises(ArgumentError, ("capacity", "capacity_factor"), moeroute.route, LOGITS, 2, capacity=2,
           capacity_factor=1.0)


@pytest.mark.parametrize("options, name", [
    ({"num_groups": 2}, ("num_groups", "topk_groups")), ({"topk_groups": 1}, ("num_groups", "topk_groups")),
    ({"num_groups": 3, "topk_groups": 1}, "num_groups"), ({"num_groups": 0, "topk_groups": 1}, "num_groups"),
    ({"num_groups": 2, "topk_groups": 0}, "topk_groups"), ({"num_groups": 2, "topk_groups": 3}, "topk_groups"),
    ({"num_groups": 4, "topk_groups": 1}, ("k", "topk_groups")),  # k = 2 > 1 * (4 // 4) selectable
])
def test_bad_groups(options, name):
    raises(ArgumentError, name, moeroute.route, LOGITS, 2, **options)


def test_bad_bias():
    raises(ShapeError, "bias", moeroute.route, LOGITS, 2, bias=np.zeros(5, np.float32))
    raises(ShapeError, "bias", moeroute.route, LOGITS, 2, bias=np.zeros((1, 4), np.float32))
    raises(DTypeError, "bias", moeroute.route, LOGITS, 2, bias=np.zeros(4, np.int32))
    raises(ArgumentError, "bias", moeroute.route, LOGITS, 2, bias=np.array([0, np.nan, 0, 0]))
    raises(ArgumentError, "bias", moeroute.route, LOGITS, 2, bias=np.array([0, np.inf, 0, 0]))


def test_expert_choice_options():
    raises(ArgumentError, "capacity", moeroute.expert_choice, LOGITS, capacity=-1)
    raises(ArgumentError, "capacity_factor", moeroute.expert_choice, LOGITS, capacity_factor=0.0)
    raises(ArgumentError, "capacity_factor", moeroute.expert_choice, LOGITS, capacity_factor=-2.0)
    raises(ArgumentError, "capacity_factor", moeroute.expert_choice, LOGITS, capacity_factor=np.nan)


def test_row_index_overflows_int32():
    raises(IndexOverflowError, "capacity", moeroute.route, LOGITS, 2, capacity=2**30)
    raises(IndexOverflowError, "pad_to", moeroute.route, LOGITS, 2, pad_to=2**30)
    raises(IndexOverflowError, "capacity", moeroute.expert_choice, LOGITS, capacity=2**30)
    raises(IndexOverflowError, ("capacity", "capacity_factor"), moeroute.route, LOGITS, 2, capacity_factor=1e12)


# --- ops -------------------------------------------------------------------------------------------


F32_ONES = np.ones((5, 3), np.float32)


@pytest.mark.parametrize("name, call", [
    ("x", lambda: moeroute.permute(np.ones((6, 3), np.float32), PLAN)),
    ("x", lambda: moeroute.permute(np.ones(5, np.float32), PLAN)),
    ("yp", lambda: moeroute.combine(np.ones((PLAN.num_rows + 1, 3), np.float32), PLAN)),
    ("weights", lambda: moeroute.combine(YP, PLAN, weights=np.ones((5, 3), np.float32))),
    ("grad_xp", lambda: moeroute.permute_backward(np.ones((1, 3), np.float32), PLAN)),
    ("grad_y", lambda: moeroute.combine_backward(np.ones((4, 3), np.float32), YP, PLAN)),
    ("grad_y", lambda: moeroute.combine_backward(np.ones((5, 2), np.float32), YP, PLAN)),
    ("logits", lambda: moeroute.route_backward(PLAN.weights, PLAN, LOGITS[:4])),
    ("grad_weights", lambda: moeroute.route_backward(PLAN.weights[:, :1], PLAN, LOGITS)),
])
def test_op_shapes(name, call):
    raises(ShapeError, name, call)


@pytest.mark.parametrize("name, call", [
    ("x", lambda: moeroute.permute(F32_ONES.astype(np.int32), PLAN)),
    ("yp", lambda: moeroute.combine(YP.astype(np.int64), PLAN)),
    ("weights", lambda: moeroute.combine(YP, PLAN, weights=np.ones((5, 2), np.int32))),
    ("weights", lambda: moeroute.combine(YP, PLAN, weights=np.ones((5, 2), np.float16))),
    ("grad_xp", lambda: moeroute.permute_backward(YP.astype(np.complex64), PLAN)),
    ("grad_y", lambda: moeroute.combine_backward(F32_ONES.astype(np.int32), YP, PLAN)),
    ("logits", lambda: moeroute.route_backward(PLAN.weights, PLAN, LOGITS.astype(np.int32))),
])
def test_op_dtypes(name, call):
    raises(DTypeError, name, call)


def test_hand_built_plan_with_expert_id_out_of_range():
    d = {name: np.array(value) for name, value in PLAN.to_dict().items()}
    d["expert_ids"][0, 0] = PLAN.num_experts
    with pytest.raises(PlanError, match="expert_ids"):
        RoutingPlan.from_dict(d)


@pytest.mark.parametrize("normalize", ["none", "topk", "kept"])
def test_route_backward_skips_a_row_without_an_expert(normalize):
    # An unvalidated plan (e.g. one whose arrays were written after routing) with a row for an
    # unused slot: the slot is not kept, as if its row were -1 (the CUDA kernel's reading), instead
    # of an internal error ("kept" normalization looked up expert -1).
    plan = moeroute.route(LOGITS, 2, normalize=normalize)
    names = moeroute.plan.FIELD_NAMES

    def with_slot(expert, row):
        arrays = [np.array(getattr(plan, name)) for name in names]
        arrays[names.index("expert_ids")][0, 1] = expert
        arrays[names.index("dest")][0, 1] = row
        return RoutingPlan._of(arrays, plan.capacity, plan.score, plan.normalize, plan.scale)

    grad_w = np.random.default_rng(1).normal(size=(5, 2)).astype(np.float32)
    got = moeroute.route_backward(grad_w, with_slot(-1, plan.dest[0, 1]), LOGITS)
    np.testing.assert_array_equal(got, moeroute.route_backward(grad_w, with_slot(-1, -1), LOGITS))


def test_bad_noise_std():
    clean = np.zeros((3, 4))
    raises(ArgumentError, "noise_std", losses.noisy_load_probs, clean, 0.0, clean, 1)
    raises(ArgumentError, "noise_std", losses.noisy_load_probs, clean, np.full((3, 4), -1.0), clean, 1)


# --- inputs are never modified ---------------------------------------------------------------------


def test_inputs_unmodified():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(9, 6)).astype(ml_dtypes.bfloat16)
    bias = rng.normal(size=6)
    x = rng.normal(size=(9, 4)).astype(np.float16)
    arrays = [logits, bias, x]
    copies = [a.copy() for a in arrays]
    for a in arrays:
        a.flags.writeable = False  # read-only inputs are accepted
    plan = moeroute.route(logits, 3, bias=bias, capacity=3, normalize="kept")
    yp = moeroute.permute(x, plan)
    yp.flags.writeable = False
    yp_copy = yp.copy()
    grad_y = moeroute.combine(yp, plan)
    grad_y.flags.writeable = False
    moeroute.permute_backward(yp, plan)
    _, grad_w = moeroute.combine_backward(grad_y, yp, plan)
    moeroute.route_backward(grad_w, plan, logits)
    moeroute.expert_choice(logits)
    losses.z_loss(logits)
    for a, c in zip(arrays + [yp], copies + [yp_copy]):
        np.testing.assert_array_equal(a, c)
    bad = np.array(logits, np.float32)
    bad[0, 0] = np.nan
    bad_copy = bad.copy()
    with pytest.raises(LogitsError):
        moeroute.route(bad, 2)
    np.testing.assert_array_equal(bad, bad_copy)


# --- hostile sizes and values (each a moeroute error naming the argument and its range) -----------


@pytest.mark.parametrize("name, value", [("capacity", 2**70), ("pad_to", 2**64), ("min_capacity", 2**64),
                                         ("capacity_multiple", 2**100), ("num_groups", 2**64)])
def test_integers_beyond_64_bits(name, value):
    kwargs = {name: value}
    if name == "num_groups":
        kwargs["topk_groups"] = 1
    with pytest.raises(ArgumentError, match=rf"\b{name}\b.*<= {2**63 - 1}"):
        moeroute.route(LOGITS, 2, **kwargs)


def test_scale_the_weights_cannot_hold():
    raises(ArgumentError, "scale", moeroute.route, LOGITS, 2, scale=1e308)
    raises(ArgumentError, "scale", moeroute.route, LOGITS.astype(ml_dtypes.bfloat16), 2, scale=-1e39)
    plan = moeroute.route(LOGITS.astype(np.float64), 2, scale=1e308)  # float64 weights hold it
    assert np.isfinite(plan.weights).all()


def test_combine_backward_dtype_rule():
    grad_y = np.ones((5, 3), np.float64)
    raises(DTypeError, "grad_y", moeroute.combine_backward, grad_y, YP, PLAN)
    raises(DTypeError, "weights", moeroute.combine, YP, PLAN, PLAN.weights.astype(np.int32))


def test_load_balancing_loss_without_slots():
    plan = RoutingPlan(expert_ids=np.zeros((3, 0), np.int32), weights=np.zeros((3, 0), np.float32),
                       probs=np.full((3, 2), 0.5, np.float32), dest=np.zeros((3, 0), np.int32),
                       src=np.zeros(0, np.int32), expert_offsets=np.zeros(3, np.int64),
                       tokens_per_expert=np.zeros(2, np.int64), assigned_per_expert=np.zeros(2, np.int64))
    assert losses.load_balancing_loss(plan) == 0.0


def test_hand_built_capacity_product_is_not_wrapped():
    with pytest.raises(PlanError) as info:
        RoutingPlan.from_dict({**PLAN.to_dict(), "capacity": np.asarray(2**62)})
    assert "18446744073709551616" in str(info.value) or "4611686018427387904" in str(info.value), str(info.value)
