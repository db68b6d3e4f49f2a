"""RoutingPlan: fields, properties, repr, construction and validation, to_dict/from_dict, save/load."""

import os
import re
import tempfile

import numpy as np
import pytest
from hypothesis import given

import moeroute
from conftest import FIELD_DTYPES, plan_st
from moeroute import DTypeError, PlanError, RoutingPlan, ShapeError

ARRAYS = ("expert_ids", "weights", "probs", "dest", "src", "expert_offsets", "tokens_per_expert",
          "assigned_per_expert")
SCALARS = ("capacity", "score", "normalize", "scale")


def fields(plan):
    """Keyword arguments that rebuild the plan (writable copies)."""
    kwargs = {name: np.array(getattr(plan, name)) for name in ARRAYS}
    kwargs.update({name: getattr(plan, name) for name in SCALARS})
    return kwargs


def assert_same_plan(a, b):
    for name in ARRAYS:
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and x.shape == y.shape, name
        np.testing.assert_array_equal(x, y, err_msg=name)
    for name in SCALARS:
        assert getattr(a, name) == getattr(b, name), name


@given(plan_st())
def test_fields_and_properties(plan_logits):
    plan, logits = plan_logits
    T, E = logits.shape
    S, R = plan.expert_ids.shape[1], plan.src.shape[0]
    assert (plan.num_tokens, plan.num_experts, plan.top_k, plan.num_rows) == (T, E, S, R)
    shapes = dict(expert_ids=(T, S), weights=(T, S), probs=(T, E), dest=(T, S), src=(R,),
                  expert_offsets=(E + 1,), tokens_per_expert=(E,), assigned_per_expert=(E,))
    for name, shape in shapes.items():
        assert getattr(plan, name).shape == shape, name
    for name, dtype in FIELD_DTYPES.items():
        assert getattr(plan, name).dtype == dtype, name
    assert plan.weights.dtype == plan.probs.dtype
    assert plan.num_dropped == int(np.sum((plan.expert_ids >= 0) & (plan.dest < 0)))
    assert isinstance(plan.num_dropped, int) and isinstance(plan.num_rows, int)


@given(plan_st())
def test_rebuilt_from_its_arrays(plan_logits):
    plan, _ = plan_logits
    assert_same_plan(RoutingPlan(**fields(plan)), plan)


def test_constructor_defaults():
    plan = moeroute.route(BASE_LOGITS, 2)
    assert_same_plan(RoutingPlan(**{name: getattr(plan, name) for name in ARRAYS}), plan)


@given(plan_st())
def test_to_dict_from_dict(plan_logits):
    plan, _ = plan_logits
    d = plan.to_dict()
    assert all(isinstance(v, np.ndarray) for v in d.values())
    assert_same_plan(RoutingPlan.from_dict(d), plan)


@pytest.mark.parametrize("options", [{}, {"capacity": 2, "normalize": "kept", "scale": 2.5},
                                     {"score": "sigmoid", "pad_to": 3}])
def test_save_load(tmp_path, options):
    plan = moeroute.route(np.random.default_rng(0).normal(size=(7, 5)).astype(np.float32), 2, **options)
    path = os.path.join(tmp_path, "plan.npz")
    plan.save(path)
    assert_same_plan(RoutingPlan.load(path), plan)
    np.savez(os.path.join(tmp_path, "d.npz"), **plan.to_dict())
    with np.load(os.path.join(tmp_path, "d.npz")) as f:
        assert_same_plan(RoutingPlan.from_dict(dict(f)), plan)


def test_save_load_expert_choice():
    plan = moeroute.expert_choice(np.random.default_rng(1).normal(size=(6, 3)))
    with tempfile.TemporaryDirectory() as tmp:
        plan.save(os.path.join(tmp, "p.npz"))
        assert_same_plan(RoutingPlan.load(os.path.join(tmp, "p.npz")), plan)


def test_arrays_are_read_only():
    plan = moeroute.route(np.zeros((3, 4), np.float32), 2, capacity=1)
    for name in ARRAYS:
        array = getattr(plan, name)
        assert not array.flags.writeable, name
        with pytest.raises(ValueError):
            array[...] = 0


def test_repr():
    plan = moeroute.route(np.zeros((5, 7), np.float32), 3, capacity=2, normalize="kept", score="sigmoid")
    text = repr(plan)
    assert "\n" not in text and text.startswith("RoutingPlan")
    for part in ("5", "7", "3", "14", "2", "sigmoid", "kept"):
        assert re.search(rf"\b{part}\b", text), (part, text)
    assert re.search(r"\b9\b", text), text  # 15 picks, 6 kept


# --- validation: one test per kind of inconsistency ------------------------------------------------
# Base: T=4, E=3, k=2, capacity 2: expert 0 takes t0, t1 (t2, t3 dropped), expert 1 takes t0, t1,
# expert 2 takes t2, t3. Rows: e0 = 0..2, e1 = 2..4, e2 = 4..6.
BASE_LOGITS = np.array([[2, 1, 0], [2, 1, 0], [2, 0, 1], [2, 0, 1]], np.float32)


def base():
    plan = moeroute.route(BASE_LOGITS, 2, capacity=2, priority="token")
    kwargs = fields(plan)
    np.testing.assert_array_equal(kwargs["dest"], [[0, 2], [1, 3], [-1, 4], [-1, 5]])
    np.testing.assert_array_equal(kwargs["src"], [0, 1, 0, 1, 2, 3])
    return kwargs


def assert_invalid(kwargs, names, error=PlanError):
    with pytest.raises(error) as info:
        RoutingPlan(**kwargs)
    message = str(info.value)
    assert any(re.search(rf"(?<![A-Za-z0-9_]){n}(?![A-Za-z0-9_])", message) for n in names), message


def test_base_is_valid():
    RoutingPlan(**base())


@pytest.mark.parametrize("value", [3, -2])
def test_expert_id_out_of_range(value):
    kwargs = base()
    kwargs["expert_ids"][3, 0] = value
    assert_invalid(kwargs, ["expert_ids"])


@pytest.mark.parametrize("value", [6, -2])
def test_dest_out_of_range(value):
    kwargs = base()
    kwargs["dest"][2, 0] = value
    assert_invalid(kwargs, ["dest"])


def test_dest_on_an_unused_slot():
    kwargs = base()
    kwargs["expert_ids"][0, 1] = -1  # t0's pick of expert 1 (row 2) becomes an unused slot ...
    kwargs["weights"][0, 1] = 0
    kwargs["tokens_per_expert"][1] = 1  # ... whose dest is still 2
    assert_invalid(kwargs, ["dest", "expert_ids"])


def test_duplicate_dest_rows():
    kwargs = base()
    kwargs["dest"][1, 0] = 0  # t0 and t1 both claim row 0
    assert_invalid(kwargs, ["dest", "src"])


def test_src_not_the_token_of_its_row():
    kwargs = base()
    kwargs["src"][[0, 1]] = [1, 0]
    assert_invalid(kwargs, ["src", "dest"])


@pytest.mark.parametrize("value", [4, -2])
def test_src_out_of_range(value):
    kwargs = base()
    kwargs["src"][1] = value
    assert_invalid(kwargs, ["src"])


def test_dest_outside_its_expert_segment():
    kwargs = base()
    kwargs["dest"][3, 1] = -1  # drop t3's pick of expert 2: row 5 is free ...
    kwargs["weights"][3, 1] = 0
    kwargs["tokens_per_expert"][2] = 1
    kwargs["dest"][1, 0] = 5  # ... and move t1's pick of expert 0 there, src kept consistent
    kwargs["src"][[1, 5]] = [-1, 1]
    assert_invalid(kwargs, ["dest", "expert_offsets"])


def test_src_row_that_is_no_picks_dest():
    kwargs = base()
    kwargs["dest"][3, 1] = -1
    kwargs["weights"][3, 1] = 0
    kwargs["tokens_per_expert"][2] = 1  # row 5 still says token 3
    assert_invalid(kwargs, ["src"])


@pytest.mark.parametrize("offsets", [[1, 2, 4, 6], [0, 4, 2, 6], [0, 2, 4, 7]])
def test_bad_expert_offsets(offsets):
    kwargs = base()
    kwargs["expert_offsets"] = np.array(offsets, np.int64)
    kwargs["capacity"] = None
    assert_invalid(kwargs, ["expert_offsets", "dest"])


def test_tokens_per_expert_mismatch():
    kwargs = base()
    kwargs["tokens_per_expert"][0] = 1
    assert_invalid(kwargs, ["tokens_per_expert"])


def test_capacity_inconsistent_with_layout():
    kwargs = base()
    kwargs["capacity"] = 3
    assert_invalid(kwargs, ["capacity"])


@pytest.mark.parametrize("name, shape", [("weights", (4, 3)), ("probs", (4, 4)), ("dest", (4, 1)),
                                         ("src", (6, 1)), ("expert_offsets", (5,)),
                                         ("tokens_per_expert", (2,)), ("expert_ids", (3, 2))])
def test_shape_mismatch(name, shape):
    kwargs = base()
    kwargs[name] = np.zeros(shape, kwargs[name].dtype)
    partners = ["expert_ids", "weights", "probs", "dest", "src", "expert_offsets", "tokens_per_expert"]
    assert_invalid(kwargs, partners, ShapeError)


@pytest.mark.parametrize("name, dtype", [("expert_ids", np.float32), ("dest", np.float64),
                                         ("src", np.float32), ("expert_offsets", np.float64),
                                         ("weights", np.int32)])
def test_wrong_dtype(name, dtype):
    kwargs = base()
    kwargs[name] = kwargs[name].astype(dtype)
    assert_invalid(kwargs, [name], DTypeError)


def test_dropless_plan_validation():
    plan = moeroute.route(BASE_LOGITS, 2, pad_to=2)
    kwargs = fields(plan)
    RoutingPlan(**kwargs)
    kwargs["expert_offsets"][-1] = plan.num_rows + 1
    assert_invalid(kwargs, ["expert_offsets"])


def test_from_dict_validates():
    d = moeroute.route(BASE_LOGITS, 2, capacity=2).to_dict()
    d = {name: np.array(value) for name, value in d.items()}
    d["expert_ids"][0, 0] = 7
    with pytest.raises(PlanError, match="expert_ids"):
        RoutingPlan.from_dict(d)
