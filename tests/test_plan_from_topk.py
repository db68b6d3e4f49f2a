"""plan_from_topk (plans of picks made elsewhere) against the NumPy reference: every field exact,
for every dtype, out-of-range ids, repeated experts, each capacity rule and priority; the torch
front (CPU) against the NumPy one; gradients through plan.weights and plan.probs (gradcheck);
permute / combine with such plans; torch.compile; and the errors."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import moeroute
import reference as ref
from conftest import FLOAT_DTYPES, TIE_VALUES, capacity_options
from moeroute.plan import FIELD_NAMES

torch = pytest.importorskip("torch")


@st.composite
def picks_case(draw, max_T=12, max_k=5, max_E=7, dtype=None):
    """(expert_ids, weights, E, options): ids partly outside [0, E), repeats allowed, tied weights."""
    T = draw(st.integers(0, max_T))
    k = draw(st.integers(1, max_k))
    E = draw(st.integers(1, max_E))
    ids = np.array(draw(st.lists(st.integers(-2, E + 1), min_size=T * k, max_size=T * k)), np.int64).reshape(T, k)
    if draw(st.booleans()):  # distinct in-range picks, as a top-k router makes
        ids = np.array([draw(st.permutations(range(max(E, k))))[:k] for _ in range(T)], np.int64).reshape(T, k)
    dtype = dtype or draw(st.sampled_from(FLOAT_DTYPES))
    values = draw(st.lists(st.sampled_from(TIE_VALUES + [0.125, 0.3, 0.7]), min_size=T * k, max_size=T * k))
    weights = np.array(values, np.float64).reshape(T, k).astype(dtype)
    return ids, weights, E, draw(capacity_options(T, k, E))


def assert_plan_equals_reference(plan, expected):
    for name in FIELD_NAMES:
        got, want = np.asarray(getattr(plan, name)), expected[name]
        assert got.dtype == want.dtype, (name, got.dtype, want.dtype)
        np.testing.assert_array_equal(got, want, err_msg=name)
    assert plan.capacity == expected["capacity"]
    assert (plan.score, plan.normalize, plan.scale) == ("given", "none", 1.0)


@given(picks_case())
def test_plan_from_topk_matches_reference(case):
    ids, weights, E, options = case
    plan = moeroute.plan_from_topk(ids, weights, E, **options)
    assert_plan_equals_reference(plan, ref.plan_from_topk(ids, weights, E, **options))
    # A valid plan: rebuilding it from its arrays runs every consistency check.
    moeroute.RoutingPlan(**{name: getattr(plan, name) for name in FIELD_NAMES}, capacity=plan.capacity,
                         score="given", normalize="none")


@given(picks_case(), st.sampled_from([torch.int64, torch.int32]))
def test_torch_front_matches_numpy(case, id_dtype):
    ids, weights, E, options = case
    expected = moeroute.plan_from_topk(ids, weights, E, **options)
    w = torch.from_numpy(weights.astype(np.float64)).to(_torch_dtype(weights.dtype))
    plan = moeroute.plan_from_topk(torch.from_numpy(ids).to(id_dtype), w, E, **options)
    for name in FIELD_NAMES:
        np.testing.assert_array_equal(getattr(plan, name).numpy(), getattr(expected, name), err_msg=name)
    assert plan.capacity == expected.capacity and plan.score == "given"


def _torch_dtype(dtype):
    return {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
            "bfloat16": torch.bfloat16}[np.dtype(dtype).name]


@given(picks_case(max_T=8, dtype=np.dtype(np.float32)), st.integers(1, 9), st.integers(0, 2**32 - 1))
def test_permute_and_combine_of_given_picks(case, hidden, seed):
    ids, weights, E, options = case
    plan = moeroute.plan_from_topk(ids, weights, E, **options)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((ids.shape[0], hidden)).astype(np.float32)
    xp = moeroute.permute(x, plan)
    np.testing.assert_array_equal(xp, ref.permute(x, plan.src))
    y = moeroute.combine(xp * 2, plan)
    np.testing.assert_allclose(y, ref.combine(xp * 2, plan.dest, plan.weights), rtol=1e-6, atol=1e-6)


def test_sentinels_and_repeats():
    # Token 0 picks expert 1 and a sentinel (3 >= E); token 1 picks expert 0 twice.
    plan = moeroute.plan_from_topk(np.array([[1, 3], [0, 0]]), np.array([[0.5, 0.5], [0.25, 0.75]], np.float32), 2)
    assert plan.expert_ids.tolist() == [[1, -1], [0, 0]]
    assert plan.dest.tolist() == [[2, -1], [0, 1]]
    assert plan.src.tolist() == [1, 1, 0, -1]
    assert plan.weights.tolist() == [[0.5, 0.0], [0.25, 0.75]]
    assert plan.probs.tolist() == [[0.0, 0.5], [1.0, 0.0]]
    assert plan.expert_offsets.tolist() == [0, 2, 3]


@pytest.mark.parametrize("options", [{}, {"capacity": 1, "priority": "score"}, {"pad_to": 4}], ids=str)
def test_gradcheck_through_weights_and_probs(options):
    ids = torch.tensor([[0, 2], [2, 1], [1, 5], [2, 0]])
    w = torch.rand(4, 2, dtype=torch.float64, requires_grad=True)
    cw, cp = torch.randn(4, 2, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)

    def f(w):
        plan = moeroute.plan_from_topk(ids, w, 3, **options)
        return (plan.weights * cw).sum() + (plan.probs * cp).sum()

    assert torch.autograd.gradcheck(f, (w,))


def test_gradients_reach_weights_through_combine():
    torch.manual_seed(0)
    ids = torch.tensor([[0, 1], [1, 2], [2, 0]])
    w = torch.rand(3, 2, dtype=torch.float64, requires_grad=True)
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)

    def f(w, x):
        plan = moeroute.plan_from_topk(ids, w, 3)
        return moeroute.combine(moeroute.permute(x, plan) * 3, plan)

    assert torch.autograd.gradcheck(f, (w, x))


def test_torch_compile_fullgraph_matches_eager():
    ids = torch.tensor([[0, 1], [1, 3], [2, 0], [3, 2]])
    w = torch.rand(4, 2)
    x = torch.randn(4, 8)

    def f(ids, w, x):
        plan = moeroute.plan_from_topk(ids, w, 4, capacity_factor=1.0)
        return moeroute.combine(moeroute.permute(x, plan), plan)

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(ids, w, x), f(ids, w, x))


def test_empty_and_single_expert():
    plan = moeroute.plan_from_topk(np.zeros((0, 3), np.int64), np.zeros((0, 3), np.float32), 4)
    assert plan.num_rows == 0 and plan.expert_offsets.tolist() == [0] * 5
    plan = moeroute.plan_from_topk(np.array([[0, 0, 0]]), np.ones((1, 3), np.float32), 1, capacity=2)
    assert plan.dest.tolist() == [[0, 1, -1]] and plan.weights.tolist() == [[1.0, 1.0, 0.0]]


@pytest.mark.parametrize("call, error, message", [
    (lambda: moeroute.plan_from_topk(np.zeros((2, 2)), np.zeros((2, 2), np.float32), 4), moeroute.DTypeError,
     "expert_ids: got dtype float64, expected an integer array"),
    (lambda: moeroute.plan_from_topk(np.zeros((2, 2), int), np.zeros((2, 3), np.float32), 4), moeroute.ShapeError,
     "weights: got shape [2, 3], expected [2, 2]"),
    (lambda: moeroute.plan_from_topk(np.zeros(2, int), np.zeros(2, np.float32), 4), moeroute.ShapeError,
     "expert_ids: got shape [2], expected a 2-D array"),
    (lambda: moeroute.plan_from_topk(np.zeros((2, 2), int), np.zeros((2, 2), np.int32), 4), moeroute.DTypeError,
     "weights"),
    (lambda: moeroute.plan_from_topk(np.zeros((2, 2), int), np.zeros((2, 2), np.float32), 0), moeroute.ArgumentError,
     "num_experts: got 0"),
    (lambda: moeroute.plan_from_topk(np.zeros((2, 2), int), np.zeros((2, 2), np.float32), 4, capacity=1,
                                     capacity_factor=1.0), moeroute.ArgumentError, "at most one of capacity and capacity_factor"),
    (lambda: moeroute.plan_from_topk(np.zeros((2, 2), int), np.zeros((2, 2), np.float32), 4, priority="best"),
     moeroute.ArgumentError, "priority"),
    (lambda: moeroute.plan_from_topk(np.zeros((2, 2), int), np.zeros((2, 2), np.float32), 4, pad_to=0),
     moeroute.ArgumentError, "pad_to"),
    (lambda: moeroute.plan_from_topk(torch.zeros(2, 2), torch.zeros(2, 2), 4), moeroute.DTypeError,
     "expert_ids: got torch.float32, expected an integer tensor"),
    (lambda: moeroute.plan_from_topk(torch.zeros(2, 2, dtype=torch.long), torch.zeros(2, 3), 4), moeroute.ShapeError,
     "weights: got shape [2, 3]"),
])
def test_bad_arguments_raise_clear_errors(call, error, message):
    with pytest.raises(error, match=message.replace("[", r"\[").replace("]", r"\]")):
        call()


def test_route_backward_refuses_given_plans():
    plan = moeroute.plan_from_topk(np.array([[0, 1]]), np.array([[0.5, 0.5]], np.float32), 2)
    with pytest.raises(moeroute.ArgumentError, match="plan_from_topk"):
        moeroute.route_backward(np.ones((1, 2), np.float32), plan, np.zeros((1, 2), np.float32))


_NO_CUDA = not torch.cuda.is_available()


@pytest.mark.gpu
@pytest.mark.skipif(_NO_CUDA, reason="needs a CUDA device")
@given(picks_case(max_T=40, max_E=70))
def test_cuda_matches_cpu(case):
    ids, weights, E, options = case
    w = torch.from_numpy(weights.astype(np.float64)).to(_torch_dtype(weights.dtype))
    expected = moeroute.plan_from_topk(torch.from_numpy(ids), w, E, **options)
    plan = moeroute.plan_from_topk(torch.from_numpy(ids).cuda(), w.cuda(), E, **options)
    for name in FIELD_NAMES:
        torch.testing.assert_close(getattr(plan, name).cpu(), getattr(expected, name), rtol=0, atol=0, msg=name)
    assert plan.capacity == expected.capacity


@pytest.mark.gpu
@pytest.mark.skipif(_NO_CUDA, reason="needs a CUDA device")
def test_cuda_gradcheck_and_compile():
    ids = torch.tensor([[0, 2], [2, 1], [1, 5], [2, 0]], device="cuda")
    w = torch.rand(4, 2, dtype=torch.float64, device="cuda", requires_grad=True)
    cp = torch.randn(4, 3, dtype=torch.float64, device="cuda")
    assert torch.autograd.gradcheck(lambda w: (moeroute.plan_from_topk(ids, w, 3, capacity=1).weights.sum()
                                               + (moeroute.plan_from_topk(ids, w, 3).probs * cp).sum()), (w,))
    x = torch.randn(4, 8, device="cuda")

    def f(ids, w, x):
        plan = moeroute.plan_from_topk(ids, w, 3)
        return moeroute.combine(moeroute.permute(x, plan), plan)

    w32 = w.detach().float()
    torch.testing.assert_close(torch.compile(f, fullgraph=True)(ids, w32, x), f(ids, w32, x))
