"""Expert-choice routing (moeroute.expert_choice) against the reference."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import moeroute
import reference as ref
from conftest import CAPACITY_FACTORS, assert_plan_matches, assert_probs_close, big_logits_st, logits_st


def check(plan, logits, C):
    T, E = logits.shape
    assert_probs_close(plan.probs, ref.scores(logits, "softmax"), logits.dtype)
    expected = ref.expert_choice_from_probs(plan.probs, C)
    assert_plan_matches(plan, [expected])
    np.testing.assert_array_equal(plan.weights, expected["weights"])  # weights are the probs themselves
    assert plan.capacity == C and plan.num_rows == E * C
    assert (plan.top_k, plan.score, plan.normalize, plan.scale) == (E, "softmax", "none", 1.0)


@given(logits_st(), st.data())
def test_expert_choice_matches_reference(logits, data):
    T, E = logits.shape
    if data.draw(st.booleans()):
        options = {"capacity": data.draw(st.integers(0, T + 2))}
    else:
        options = {"capacity_factor": data.draw(st.sampled_from(CAPACITY_FACTORS))}
    plan = moeroute.expert_choice(logits, **options)
    check(plan, logits, ref.expert_choice_capacity(T, E, **options))


@given(big_logits_st(max_E=40), st.sampled_from(CAPACITY_FACTORS))
def test_large_expert_choice_matches_reference(logits, capacity_factor):
    plan = moeroute.expert_choice(logits, capacity_factor=capacity_factor)
    check(plan, logits, ref.expert_choice_capacity(*logits.shape, capacity_factor=capacity_factor))


@given(logits_st())
def test_default_capacity_factor_is_one(logits):
    T, E = logits.shape
    check(moeroute.expert_choice(logits), logits, -(-T // E))


def test_hand_example():
    logits = np.array([[1, 0], [0, 1], [1, 0], [0.5, 0.5]], np.float32)
    plan = moeroute.expert_choice(logits)  # C = 4 / 2
    np.testing.assert_array_equal(plan.expert_ids, [[0, -1], [-1, 1], [0, -1], [-1, 1]])
    np.testing.assert_array_equal(plan.dest, [[0, -1], [-1, 2], [1, -1], [-1, 3]])
    np.testing.assert_array_equal(plan.src, [0, 2, 1, 3])
    np.testing.assert_array_equal(plan.weights, np.where(plan.expert_ids >= 0, plan.probs, 0))
    np.testing.assert_array_equal(plan.tokens_per_expert, [2, 2])
    np.testing.assert_array_equal(plan.assigned_per_expert, [2, 2])


def test_ties_go_to_the_lower_token():
    plan = moeroute.expert_choice(np.zeros((3, 1), np.float32), capacity=2)
    np.testing.assert_array_equal(plan.expert_ids, [[0], [0], [-1]])
    np.testing.assert_array_equal(plan.src, [0, 1])


def test_capacity_above_tokens_pads():
    plan = moeroute.expert_choice(np.array([[0.0, 1.0], [2.0, 0.0]], np.float32), capacity=3)
    np.testing.assert_array_equal(plan.src, [0, 1, -1, 0, 1, -1])
    np.testing.assert_array_equal(plan.dest, [[0, 3], [1, 4]])
    np.testing.assert_array_equal(plan.expert_offsets, [0, 3, 6])
    np.testing.assert_array_equal(plan.tokens_per_expert, [2, 2])
    assert plan.num_dropped == 0


@pytest.mark.parametrize("options, rows", [({}, 0), ({"capacity": 2}, 6), ({"capacity_factor": 4.0}, 0)])
def test_zero_tokens(options, rows):
    plan = moeroute.expert_choice(np.zeros((0, 3), np.float32), **options)
    assert plan.expert_ids.shape == (0, 3) and plan.num_rows == rows
    np.testing.assert_array_equal(plan.src, np.full(rows, -1))
    np.testing.assert_array_equal(plan.tokens_per_expert, [0, 0, 0])
