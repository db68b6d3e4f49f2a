"""permute and combine against the reference (float32 accumulation in slot order)."""

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

import moeroute
import reference as ref
from conftest import F32, F64, activations, assert_sum_close, plan_st


@given(plan_st(), st.data())
def test_permute(plan_logits, data):
    plan, _ = plan_logits
    x = data.draw(activations(plan.num_tokens))
    xp = moeroute.permute(x, plan)
    assert xp.dtype == x.dtype and xp.shape == (plan.num_rows, x.shape[1])
    np.testing.assert_array_equal(xp, ref.permute(x, plan.src))
    assert np.all(xp[plan.src < 0] == 0)


@given(plan_st(), st.data())
def test_combine(plan_logits, data):
    plan, _ = plan_logits
    yp = data.draw(activations(plan.num_rows))
    y = moeroute.combine(yp, plan)
    assert y.shape == (plan.num_tokens, yp.shape[1])
    expected = ref.combine(yp, plan.dest, plan.weights)
    assert_sum_close(y, expected, ref.combine_abs(yp, plan.dest, plan.weights), yp.dtype)


@given(plan_st(), st.data())
def test_combine_with_explicit_weights(plan_logits, data):
    plan, _ = plan_logits
    yp = data.draw(activations(plan.num_rows))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    weights = rng.uniform(-2, 2, plan.expert_ids.shape).astype(data.draw(st.sampled_from([F32, F64])))
    y = moeroute.combine(yp, plan, weights=weights)
    expected = ref.combine(yp, plan.dest, weights)
    assert_sum_close(y, expected, ref.combine_abs(yp, plan.dest, weights), yp.dtype)


@given(plan_st(), st.data())
def test_combine_of_permute_with_unit_weights_counts_kept_picks(plan_logits, data):
    plan, _ = plan_logits
    x = data.draw(activations(plan.num_tokens))
    y = moeroute.combine(moeroute.permute(x, plan), plan, weights=np.ones(plan.dest.shape, F32))
    kept = (plan.dest >= 0).sum(axis=1)
    if np.all(kept <= 1):  # exact: one term (or none) per token
        np.testing.assert_array_equal(y, x * kept[:, None].astype(x.dtype))
    else:
        expected = (x.astype(F64) * kept[:, None]).astype(x.dtype)
        assert_sum_close(y, expected, np.abs(x.astype(F64)) * kept[:, None], x.dtype)


def test_hand_example():
    plan = moeroute.route(np.array([[0.0, 3.0], [3.0, 0.0]], np.float32), 2, capacity=1, normalize="kept")
    x = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)
    xp = moeroute.permute(x, plan)
    np.testing.assert_array_equal(xp, [[3, 4], [1, 2]])
    yp = np.array([[10.0, 20.0], [30.0, 40.0]], np.float32)
    np.testing.assert_array_equal(moeroute.combine(yp, plan), [[30, 40], [10, 20]])
    w = np.array([[0.5, 7.0], [2.0, 7.0]], np.float32)  # slot 1 is dropped: its weight is ignored
    np.testing.assert_array_equal(moeroute.combine(yp, plan, weights=w), [[15, 20], [20, 40]])


def test_non_contiguous_activations():
    plan = moeroute.route(np.random.default_rng(2).normal(size=(6, 4)).astype(np.float32), 2, capacity=2)
    x = np.random.default_rng(3).normal(size=(8, 6)).astype(np.float32).T[:6, ::2]
    np.testing.assert_array_equal(moeroute.permute(x, plan), moeroute.permute(np.ascontiguousarray(x), plan))
    yp = np.random.default_rng(4).normal(size=(plan.num_rows, 10))[:, 1::3]
    np.testing.assert_array_equal(moeroute.combine(yp, plan), moeroute.combine(np.ascontiguousarray(yp), plan))
