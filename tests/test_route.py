"""Token-choice routing (moeroute.route): scores, selection, capacity and layouts against the reference."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import moeroute
from moeroute.plan import FIELD_NAMES
import reference as ref
from conftest import (F32, F64, FLOAT_DTYPES, assert_plan_matches, assert_probs_close,
                      logits_st, route_case)



def reference_candidates(probs, k, opts):
    """The reference plan built on the kernel's own probs, with the selection arithmetic done in the
    score dtype and (for float32 scores) also in float64, to tolerate near-ties rounded differently."""
    options = {key: value for key, value in opts.items() if key != "score"}
    candidates = [ref.route_from_probs(probs, k, **options)]
    if probs.dtype == F32:
        candidates.append(ref.route_from_probs(probs, k, dt=F64, **options))
    return candidates


@given(route_case())
def test_route_matches_reference(case):
    logits, k, opts = case
    plan = moeroute.route(logits, k, **opts)
    assert_probs_close(plan.probs, ref.scores(logits, opts["score"]), logits.dtype)
    assert_plan_matches(plan, reference_candidates(plan.probs, k, opts))
    assert (plan.score, plan.normalize, plan.scale) == (opts["score"], opts["normalize"], opts["scale"])


@given(route_case(big=True))
def test_large_route_matches_reference(case):
    logits, k, opts = case
    plan = moeroute.route(logits, k, **opts)
    assert_probs_close(plan.probs, ref.scores(logits, opts["score"]), logits.dtype)
    assert_plan_matches(plan, reference_candidates(plan.probs, k, opts))


@given(route_case(groups=True))
def test_group_limited_routing_matches_reference(case):
    logits, k, opts = case
    plan = moeroute.route(logits, k, **opts)
    assert_plan_matches(plan, reference_candidates(plan.probs, k, opts))


@given(route_case(dropless=False, priority="score", max_T=16))
def test_score_priority_matches_reference(case):
    logits, k, opts = case
    plan = moeroute.route(logits, k, **opts)
    assert_plan_matches(plan, reference_candidates(plan.probs, k, opts))


@given(logits_st(), st.data())
def test_defaults(logits, data):
    k = data.draw(st.integers(1, logits.shape[1]))
    plan = moeroute.route(logits, k)
    explicit = moeroute.route(logits, k, score="softmax", normalize="topk", scale=1.0, bias=None,
                              num_groups=None, topk_groups=None, capacity=None, capacity_factor=None,
                              min_capacity=0, capacity_multiple=1, priority="slot", pad_to=1)
    assert (plan.capacity, plan.score, plan.normalize, plan.scale) == (None, "softmax", "topk", 1.0)
    assert plan.num_rows == logits.shape[0] * k
    for f in FIELD_NAMES:
        np.testing.assert_array_equal(getattr(plan, f), getattr(explicit, f), err_msg=f)
    assert_plan_matches(plan, reference_candidates(plan.probs, k, {}))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_infinite_logits(dtype):
    logits = np.array([[np.inf, 0, np.inf, -np.inf], [0, 0, 0, 0], [-np.inf, 1, -np.inf, -np.inf]], dtype)
    plan = moeroute.route(logits, 2)
    np.testing.assert_array_equal(plan.probs, [[0.5, 0, 0.5, 0], [0.25] * 4, [0, 1, 0, 0]])
    np.testing.assert_array_equal(plan.expert_ids, [[0, 2], [0, 1], [1, 0]])
    np.testing.assert_array_equal(plan.weights, [[0.5, 0.5], [0.5, 0.5], [1, 0]])
    plan = moeroute.route(logits, 2, score="sigmoid", normalize="none")
    np.testing.assert_array_equal(plan.probs[0], [1, 0.5, 1, 0])
    np.testing.assert_array_equal(plan.expert_ids[0], [0, 2])


def test_ties_go_to_the_lower_expert_and_slots_are_sorted():
    plan = moeroute.route(np.zeros((3, 5), np.float32), 3)
    np.testing.assert_array_equal(plan.expert_ids, [[0, 1, 2]] * 3)
    np.testing.assert_allclose(plan.weights, np.full((3, 3), 1 / 3), rtol=1e-6)
    plan = moeroute.route(np.array([[0, 3, 1, 3, 2]], np.float32), 4)
    np.testing.assert_array_equal(plan.expert_ids, [[1, 3, 4, 2]])


def test_bias_is_for_selection_only():
    logits = np.array([[2.0, 1.0, 0.0]], np.float32)
    plan = moeroute.route(logits, 1, score="sigmoid", normalize="none", bias=np.array([0, 0, 5.0]))
    np.testing.assert_array_equal(plan.expert_ids, [[2]])
    np.testing.assert_array_equal(plan.weights, [[0.5]])
    np.testing.assert_allclose(plan.probs, [[1 / (1 + math.exp(-v)) for v in (2, 1, 0)]], rtol=1e-6)


@pytest.mark.parametrize("logits, k, expected", [
    ([[3, -9, 2, 2]], 2, [[0, 1]]),        # group score = sum of its top-2: 20.1 > 14.8
    ([[3, -9, 2.5, 2.5]], 2, [[2, 3]]),    # 24.4 > 20.1 (a top-1 group score would keep group 0)
    ([[0, 1, 1, 0]], 2, [[1, 0]]),         # equal group scores: the lower group wins
])
def test_group_limited_routing(logits, k, expected):
    plan = moeroute.route(np.array(logits, np.float32), k, num_groups=2, topk_groups=1)
    np.testing.assert_array_equal(plan.expert_ids, expected)


def test_masked_groups_are_minus_infinity_not_zero():
    plan = moeroute.route(np.zeros((1, 4), np.float32), 2, score="sigmoid", normalize="none",
                          bias=np.array([-5, -5, -6, -6.0]), num_groups=2, topk_groups=1)
    np.testing.assert_array_equal(plan.expert_ids, [[0, 1]])


# Sigmoid, normalize="none", capacity 1: t0 picks (e1 .269, e0 .119), t1 picks (e0 .953, e1 .881).
@pytest.mark.parametrize("priority, dest, src", [
    ("slot", [[1, -1], [0, -1]], [1, 0]),
    ("token", [[1, 0], [-1, -1]], [0, 0]),
    ("score", [[-1, -1], [0, 1]], [1, 1]),
])
def test_priorities(priority, dest, src):
    logits = np.array([[-2.0, -1.0], [3.0, 2.0]], np.float32)
    plan = moeroute.route(logits, 2, score="sigmoid", normalize="none", capacity=1, priority=priority)
    np.testing.assert_array_equal(plan.expert_ids, [[1, 0], [0, 1]])
    np.testing.assert_array_equal(plan.dest, dest)
    np.testing.assert_array_equal(plan.src, src)
    np.testing.assert_array_equal(plan.expert_offsets, [0, 1, 2])
    assert plan.num_dropped == 2 and plan.capacity == 1


@pytest.mark.parametrize("normalize, weights", [
    ("none", [[0.95257413, 0], [0.95257413, 0]]),
    ("topk", [[0.95257413, 0], [0.95257413, 0]]),
    ("kept", [[1, 0], [1, 0]]),
])
def test_normalize_modes_with_drops(normalize, weights):
    logits = np.array([[0.0, 3.0], [3.0, 0.0]], np.float32)
    plan = moeroute.route(logits, 2, normalize=normalize, capacity=1, scale=2.0)
    np.testing.assert_array_equal(plan.dest, [[1, -1], [0, -1]])
    np.testing.assert_allclose(plan.weights, 2 * np.array(weights), rtol=1e-6)


def test_zero_denominator_gives_zero_weights():
    inf = np.inf
    logits = np.array([[-inf, -inf, 5, -1, -1], [-inf, -inf, 0, -inf, -inf]], np.float32)
    plan = moeroute.route(logits, 3, score="sigmoid", normalize="kept", capacity=1)
    np.testing.assert_array_equal(plan.expert_ids, [[2, 3, 4], [2, 0, 1]])
    np.testing.assert_array_equal(plan.dest, [[2, 3, 4], [-1, 0, 1]])  # t1 keeps only score-0 picks
    np.testing.assert_array_equal(plan.weights[1], [0, 0, 0])
    assert np.all(np.isfinite(plan.weights)) and plan.weights[0].sum() == pytest.approx(1, rel=1e-6)


def test_dropless_pad_to():
    logits = np.array([[1, 0, 0], [1, 0, 0], [0, 0, 1]], np.float32)
    plan = moeroute.route(logits, 1, pad_to=4)
    np.testing.assert_array_equal(plan.expert_offsets, [0, 4, 4, 8])
    np.testing.assert_array_equal(plan.dest, [[0], [1], [4]])
    np.testing.assert_array_equal(plan.src, [0, 1, -1, -1, 2] + [-1] * 7)
    np.testing.assert_array_equal(plan.tokens_per_expert, [2, 0, 1])


def test_capacity_resolution():
    logits = np.zeros((10, 4), np.float32)
    assert moeroute.route(logits, 2, capacity_factor=1.0).capacity == 5
    assert moeroute.route(logits, 2, capacity_factor=0.25).capacity == 2  # ceil(1.25)
    assert moeroute.route(logits, 2, capacity_factor=1.0, min_capacity=7).capacity == 7
    plan = moeroute.route(logits, 2, capacity_factor=1.0, min_capacity=7, capacity_multiple=4)
    assert plan.capacity == 8 and plan.num_rows == 32
    plan = moeroute.route(logits, 2, capacity=3, capacity_multiple=2, pad_to=5)
    assert plan.capacity == 4 and plan.num_rows == 16


def test_capacity_zero_drops_everything():
    plan = moeroute.route(np.ones((3, 4), np.float32), 2, capacity=0)
    assert plan.num_rows == 0 and plan.num_dropped == 6 and plan.capacity == 0
    assert np.all(plan.dest == -1) and np.all(plan.weights == 0)
    np.testing.assert_array_equal(plan.expert_ids, [[0, 1]] * 3)
    np.testing.assert_array_equal(plan.assigned_per_expert, [3, 3, 0, 0])


@pytest.mark.parametrize("options, rows", [
    ({}, 0), ({"pad_to": 3}, 8), ({"capacity": 2}, 8), ({"capacity_factor": 1.0}, 0),
    ({"capacity_factor": 1.0, "min_capacity": 1}, 4),
])
def test_zero_tokens(options, rows):
    plan = moeroute.route(np.zeros((0, 4), np.float32), 2, **options)
    assert plan.expert_ids.shape == plan.dest.shape == plan.weights.shape == (0, 2)
    assert plan.probs.shape == (0, 4) and plan.num_rows == rows
    np.testing.assert_array_equal(plan.src, np.full(rows, -1))
    np.testing.assert_array_equal(plan.tokens_per_expert, np.zeros(4))


def test_one_expert():
    plan = moeroute.route(np.array([[3.0], [-30.0], [np.inf]], np.float32), 1)
    np.testing.assert_array_equal(plan.probs, np.ones((3, 1)))
    np.testing.assert_array_equal(plan.weights, np.ones((3, 1)))
    np.testing.assert_array_equal(plan.src, [0, 1, 2])


@given(route_case(groups=False))
def test_non_contiguous_logits(case):
    logits, k, opts = case
    wide = np.repeat(logits, 2, axis=1)[:, ::2]
    fortran = np.asfortranarray(logits)
    plan = moeroute.route(logits, k, **opts)
    for other in (moeroute.route(wide, k, **opts), moeroute.route(fortran, k, **opts)):
        for f in FIELD_NAMES:
            np.testing.assert_array_equal(getattr(other, f), getattr(plan, f), err_msg=f)
