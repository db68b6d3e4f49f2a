"""permute_backward, combine_backward and route_backward against the analytic reference and finite
differences of the reference forward (float64)."""

import ml_dtypes
import pytest
import numpy as np
from hypothesis import given
from hypothesis import strategies as st

import moeroute
import reference as ref
from moeroute import _core
from moeroute.numpy._convert import activation, restore
from conftest import F32, F64, HALF_DTYPES, activations, assert_sum_close, eps, plan_st


def random(data, shape, dtype, low=-2.0, high=2.0):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    return rng.uniform(low, high, shape).astype(dtype)


def finite_difference(f, x, h):
    """Central differences of the scalar function f at every entry of the float64 array x."""
    grad = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        up, down = x.copy(), x.copy()
        up[i] += h
        down[i] -= h
        grad[i] = (f(up) - f(down)) / (2 * h)
    return grad


# --- permute_backward ------------------------------------------------------------------------------


@given(plan_st(), st.data())
def test_permute_backward(plan_logits, data):
    plan, _ = plan_logits
    grad_xp = data.draw(activations(plan.num_rows))
    grad_x = moeroute.permute_backward(grad_xp, plan)
    assert grad_x.shape == (plan.num_tokens, grad_xp.shape[1])
    ones = np.ones(plan.dest.shape)
    assert_sum_close(grad_x, ref.permute_backward(grad_xp, plan.dest), ref.combine_abs(grad_xp, plan.dest, ones),
                     grad_xp.dtype)


@given(plan_st(max_T=6, max_E=4), st.data())
def test_permute_backward_finite_differences(plan_logits, data):
    plan, _ = plan_logits
    H = data.draw(st.integers(1, 3))
    x = random(data, (plan.num_tokens, H), F64)
    grad_xp = random(data, (plan.num_rows, H), F64)
    fd = finite_difference(lambda x: np.sum(grad_xp * ref.permute(x, plan.src)), x, 1e-3)
    np.testing.assert_allclose(moeroute.permute_backward(grad_xp, plan), fd, rtol=1e-9, atol=1e-9)


@given(plan_st(), st.data())
def test_permute_backward_sums_the_gradients_of_several_uses(plan_logits, data):
    # The core's permute_backward with extra gradients (the rows used twice): each slot adds its
    # row of every gradient in the accumulation dtype, then the slots are summed as usual.
    plan, _ = plan_logits
    first = data.draw(activations(plan.num_rows))
    uses = data.draw(st.integers(2, 3))
    grads = [first] + [data.draw(activations(plan.num_rows, H=first.shape[1], dtype=first.dtype))
                       for _ in range(uses - 1)]
    storages = [activation(g, "grad_xp", ndim=2)[0] for g in grads]
    dtype_name = activation(first, "grad_xp", ndim=2)[1]
    got = restore(_core.permute_backward(storages[0], dtype_name, plan.dest, *storages[1:]), first.dtype)
    acc = F64 if first.dtype == F64 else F32
    summed = sum(g.astype(acc) for g in grads)
    ones = np.ones(plan.dest.shape)
    want = ref.permute_backward(summed, plan.dest).astype(first.dtype)
    abs_sum = ref.combine_abs(sum(np.abs(g.astype(F64)) for g in grads), plan.dest, ones)
    assert_sum_close(got, want, abs_sum, first.dtype)


def test_permute_backward_rejects_gradients_of_another_shape():
    plan = moeroute.route(np.array([[1.0, 0.0], [0.0, 1.0]], F32), 1)
    g = np.ones((plan.num_rows, 3), F32)
    with pytest.raises(moeroute.ShapeError, match="grad_xp"):
        _core.permute_backward(g, "float32", plan.dest, np.ones((plan.num_rows, 4), F32))
    with pytest.raises(moeroute.DTypeError, match="grad_xp"):
        _core.permute_backward(g, "float32", plan.dest, g.astype(F64))


# --- combine_backward ------------------------------------------------------------------------------


def check_combine_backward(plan, grad_y, yp, weights):
    explicit = weights is not None
    weights = plan.weights if weights is None else weights
    grad_yp, grad_w = moeroute.combine_backward(grad_y, yp, plan, weights=weights if explicit else None)
    assert grad_yp.dtype == yp.dtype and grad_yp.shape == yp.shape
    assert grad_w.dtype == weights.dtype and grad_w.shape == plan.dest.shape
    ref_yp, ref_w = ref.combine_backward(grad_y, yp, plan.dest, weights)
    if yp.dtype == F32 and weights.dtype == F64:  # w * grad_y rounded once or twice
        assert_sum_close(grad_yp, ref_yp, np.abs(ref_yp.astype(F64)), F32, rtol=2 * eps(F32))
    elif yp.dtype in HALF_DTYPES:
        assert_sum_close(grad_yp, ref_yp, None, yp.dtype)
    else:
        np.testing.assert_array_equal(grad_yp, ref_yp)  # one correctly rounded product
    # grad_weights: a dot product of length H accumulated in float32 (or float64)
    acc_eps = eps(F64) if yp.dtype == F64 and weights.dtype == F64 else eps(F32)
    padded = np.vstack([np.abs(yp.astype(F64)), np.zeros((1, yp.shape[1]))])
    rows = np.where(plan.dest >= 0, plan.dest, plan.num_rows)
    dot_abs = np.einsum("th,tsh->ts", np.abs(grad_y.astype(F64)), padded[rows])
    tol = 2 * yp.shape[1] * acc_eps * dot_abs + eps(weights.dtype) * np.abs(ref_w)
    bad = np.abs(grad_w.astype(F64) - ref_w) > tol
    assert not bad.any(), (grad_w[bad], ref_w[bad])


@given(plan_st(), st.data())
def test_combine_backward(plan_logits, data):
    plan, _ = plan_logits
    yp = data.draw(activations(plan.num_rows))
    grad_y = data.draw(activations(plan.num_tokens, H=yp.shape[1], dtype=yp.dtype))
    check_combine_backward(plan, grad_y, yp, None)


@given(plan_st(), st.data())
def test_combine_backward_with_explicit_weights(plan_logits, data):
    plan, _ = plan_logits
    yp = data.draw(activations(plan.num_rows))
    grad_y = data.draw(activations(plan.num_tokens, H=yp.shape[1], dtype=yp.dtype))
    weights = random(data, plan.dest.shape, data.draw(st.sampled_from([F32, F64])))
    check_combine_backward(plan, grad_y, yp, weights)


@given(plan_st(max_T=5, max_E=4), st.data())
def test_combine_backward_finite_differences(plan_logits, data):
    plan, _ = plan_logits
    H = data.draw(st.integers(1, 3))
    yp = random(data, (plan.num_rows, H), F64)
    grad_y = random(data, (plan.num_tokens, H), F64)
    weights = random(data, plan.dest.shape, F64)
    grad_yp, grad_w = moeroute.combine_backward(grad_y, yp, plan, weights=weights)
    fd_yp = finite_difference(lambda v: np.sum(grad_y * ref.combine(v, plan.dest, weights)), yp, 1e-3)
    fd_w = finite_difference(lambda w: np.sum(grad_y * ref.combine(yp, plan.dest, w)), weights, 1e-3)
    np.testing.assert_allclose(grad_yp, fd_yp, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(grad_w, fd_w, rtol=1e-9, atol=1e-9)


# --- route_backward --------------------------------------------------------------------------------


def gradient_scale(plan, logits, grad_w):
    """Per-entry scale of grad_logits: |scale| * sum_s |g| / D (the bound on d/dprobs) times probs."""
    p = ref.scores(logits, plan.score)
    g = np.abs(np.asarray(grad_w, F64)) * (plan.dest >= 0)
    denominators = np.ones(plan.num_tokens)
    if plan.normalize != "none":
        in_denominator = plan.expert_ids >= 0 if plan.normalize == "topk" else plan.dest >= 0
        picked = np.take_along_axis(p, np.maximum(plan.expert_ids, 0), axis=1) * in_denominator
        denominators = np.where(picked.sum(axis=1) > 0, picked.sum(axis=1), 1.0)
    return (abs(plan.scale) * g.sum(axis=1) / denominators)[:, None] * p


@given(plan_st(inf=False), st.data())
def test_route_backward(plan_logits, data):
    check_route_backward(*plan_logits, data)


@given(plan_st(inf=False, dropless=False, normalize="topk", min_k=2), st.data())
def test_route_backward_topk_with_drops(plan_logits, data):
    """Dropped picks stay in the "topk" denominator."""
    check_route_backward(*plan_logits, data)


def check_route_backward(plan, logits, data):
    grad_w = random(data, plan.expert_ids.shape, plan.weights.dtype)
    got = moeroute.route_backward(grad_w, plan, logits)
    assert got.dtype == logits.dtype and got.shape == logits.shape
    expected = ref.route_backward(grad_w, plan.expert_ids, plan.dest, logits, plan.score, plan.normalize,
                                  plan.scale)
    scale = gradient_scale(plan, logits, grad_w)
    if logits.dtype == F64:
        tol = 1e-11 * scale
    else:  # float32 scores: relative error ~1e-6 of the probs and denominators
        tol = 1e-4 * scale
    if logits.dtype in HALF_DTYPES:  # plus the rounding of the result to the half type
        info = ml_dtypes.finfo(logits.dtype)
        tol = tol + float(info.eps) * np.abs(expected) + float(info.smallest_subnormal)
    bad = np.abs(got.astype(F64) - expected) > tol + 1e-300
    assert not bad.any(), (got[bad], expected[bad])


@given(plan_st(dtype=F64, inf=False, max_T=5, max_E=5), st.data())
def test_route_backward_finite_differences(plan_logits, data):
    check_route_backward_finite_differences(*plan_logits, data)


@given(plan_st(dtype=F64, inf=False, max_T=5, max_E=5, dropless=False, min_k=2), st.data())
def test_route_backward_finite_differences_with_drops(plan_logits, data):
    check_route_backward_finite_differences(*plan_logits, data)


def check_route_backward_finite_differences(plan, logits, data):
    grad_w = random(data, plan.expert_ids.shape, F64)
    got = moeroute.route_backward(grad_w, plan, logits)
    analytic = ref.route_backward(grad_w, plan.expert_ids, plan.dest, logits, plan.score, plan.normalize,
                                  plan.scale)
    fd = np.zeros_like(logits)
    for t in range(plan.num_tokens):  # a token's logits only move its own weights
        ids, dest, g = plan.expert_ids[t:t + 1], plan.dest[t:t + 1], grad_w[t:t + 1]

        def loss(row):
            return np.sum(g * ref.weights_fixed(row, ids, dest, plan.score, plan.normalize, plan.scale))

        fd[t:t + 1] = finite_difference(loss, logits[t:t + 1].copy(), 1e-5)
    tol = 1e-6 * (gradient_scale(plan, logits, grad_w).sum(axis=1, keepdims=True)
                  + abs(plan.scale) * np.abs(grad_w).sum(axis=1, keepdims=True)) + 1e-9
    assert np.all(np.abs(analytic - fd) <= tol), (analytic, fd)
    assert np.all(np.abs(got - fd) <= tol), (got, fd)


# --- large outputs -----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [F32, ml_dtypes.bfloat16])
def test_large_outputs_streamed_past_the_cache(dtype):
    """Outputs of 16 MiB and more are written with streaming stores, in a different code path;
    a capacity-limited plan (dropped picks, padding rows) through every data-moving op."""
    T, E, k, H = 4096, 16, 2, 1024  # rows: 16 experts x 512 = 8192; xp 16-32 MiB, y 8-16 MiB
    rng = np.random.default_rng(7)
    plan = moeroute.route(rng.standard_normal((T, E)).astype(F32), k, capacity_factor=1.0)
    assert plan.num_dropped > 0 and (plan.src < 0).any()
    x = rng.uniform(-2, 2, (T, H)).astype(dtype)
    xp = moeroute.permute(x, plan)
    np.testing.assert_array_equal(xp, ref.permute(x, plan.src))
    yp = rng.uniform(-2, 2, xp.shape).astype(dtype)
    y = moeroute.combine(yp, plan)
    assert_sum_close(y, ref.combine(yp, plan.dest, plan.weights),
                     ref.combine_abs(yp, plan.dest, plan.weights), dtype)
    grad_x = moeroute.permute_backward(yp, plan)
    np.testing.assert_array_equal(grad_x.astype(F64), ref.permute_backward(yp, plan.dest).astype(F64))
    grad_y = rng.uniform(-2, 2, y.shape).astype(dtype)
    check_combine_backward(plan, grad_y, yp, None)
