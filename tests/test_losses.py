"""moeroute.losses: load-balancing, z-loss, importance and noisy-top-k load losses vs the reference."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import moeroute
import reference as ref
from conftest import F32, F64, logits_st, plan_st
from moeroute import losses


@given(plan_st())
def test_load_balancing_loss(plan_logits):
    plan, _ = plan_logits
    got = losses.load_balancing_loss(plan)
    assert isinstance(got, float)
    expected = ref.load_balancing_loss(plan.assigned_per_expert, plan.probs, plan.top_k)
    assert got == pytest.approx(expected, rel=1e-5, abs=1e-7)


def test_load_balancing_loss_values():
    # uniform probs: the loss is 1 however the picks are spread
    assert losses.load_balancing_loss(moeroute.route(np.zeros((8, 4), np.float32), 2)) == pytest.approx(1.0)
    # every token sends both picks to the experts holding all the mass: E * (1/2 * 1/2 + 1/2 * 1/2) = 2
    logits = np.array([[np.inf, np.inf, -np.inf, -np.inf]] * 3, np.float32)
    assert losses.load_balancing_loss(moeroute.route(logits, 2)) == pytest.approx(2.0)
    assert losses.load_balancing_loss(moeroute.route(np.zeros((0, 4), np.float32), 2)) == 0.0


@given(logits_st(inf=False))
def test_z_loss(logits):
    got = losses.z_loss(logits)
    assert isinstance(got, float)
    assert got == pytest.approx(ref.z_loss(logits), rel=1e-9, abs=1e-12)


def test_z_loss_values():
    assert losses.z_loss(np.zeros((3, 5), np.float32)) == pytest.approx(math.log(5) ** 2, rel=1e-12)
    assert losses.z_loss(np.zeros((0, 5), np.float32)) == 0.0


@given(plan_st())
def test_importance_loss(plan_logits):
    plan, _ = plan_logits
    got = losses.importance_loss(plan)
    assert isinstance(got, float)
    expected = ref.importance_loss(plan.expert_ids, plan.weights, plan.num_experts)
    assert got == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_importance_loss_values():
    balanced = moeroute.route(np.eye(4, dtype=np.float32) * 5, 1, normalize="none")
    assert losses.importance_loss(balanced) == pytest.approx(0.0, abs=1e-12)
    # all importance on one of two experts: mean 1/2, variance 1/4, CV^2 = 1
    assert losses.importance_loss(moeroute.route(np.array([[1.0, 0.0]], np.float32), 1)) == pytest.approx(1.0)
    assert losses.importance_loss(moeroute.route(np.zeros((3, 2), np.float32), 1, capacity=0)) == 0.0


@st.composite
def noisy_case(draw):
    clean = draw(logits_st(inf=False, dtype=draw(st.sampled_from([F32, F64]))))
    T, E = clean.shape
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    noisy = clean + rng.normal(size=clean.shape).astype(clean.dtype)
    shape = draw(st.sampled_from([(), (T, E), (E,), (T, 1)]))
    noise_std = rng.uniform(0.1, 2.0, shape)
    noise_std = float(noise_std) if shape == () else noise_std
    return clean, noise_std, noisy, draw(st.integers(1, E))


@given(noisy_case())
def test_noisy_load_probs(case):
    got = losses.noisy_load_probs(*case)
    assert got.dtype == F64 and got.shape == case[0].shape
    np.testing.assert_allclose(got, ref.noisy_load_probs(*case), rtol=1e-9, atol=1e-12)


@given(noisy_case())
def test_noisy_load_loss(case):
    got = losses.noisy_load_loss(*case)
    assert isinstance(got, float)
    assert got == pytest.approx(ref.noisy_load_loss(*case), rel=1e-8, abs=1e-12)


def test_noisy_load_probs_values():
    clean = np.array([[0.0, 1.0, 2.0]])
    noisy = np.array([[0.5, 1.0, 3.0]])
    # k = 1: thresholds are the max of the others: 3, 3, 1
    expected = [[ref.phi(-3.0), ref.phi(-2.0), ref.phi(1.0)]]
    np.testing.assert_allclose(losses.noisy_load_probs(clean, 1.0, noisy, 1), expected, rtol=1e-12)
    np.testing.assert_array_equal(losses.noisy_load_probs(clean, 1.0, noisy, 3), np.ones((1, 3)))
