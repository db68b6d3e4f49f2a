"""Shared hypothesis strategies, the hypothesis settings profile and tolerance helpers."""

import os

import ml_dtypes
import moeroute
import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

# HYPOTHESIS_PROFILE=thorough runs 1000 examples per property (a few minutes) instead of 60.
for name, examples in (("moeroute", 60), ("thorough", 1000)):
    settings.register_profile(name, deadline=None, max_examples=examples,
                              suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "moeroute"))

F32 = np.dtype(np.float32)
F64 = np.dtype(np.float64)
F16 = np.dtype(np.float16)
BF16 = np.dtype(ml_dtypes.bfloat16)
FLOAT_DTYPES = [F32, F64, F16, BF16]
HALF_DTYPES = [F16, BF16]

# A small set of values makes ties (equal scores, equal group scores, equal weights) common.
TIE_VALUES = [-3.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0]
CAPACITY_FACTORS = [0.25, 0.5, 1.0, 1.25, 2.0, 3.0]  # dyadic: cf * T * k is exact


def eps(dtype):
    return float(ml_dtypes.finfo(dtype).eps)


def half_ulp_close(got, ref, dtype, ulps=1):
    """|got - ref| <= ulps units in the last place of the half type (at ref's magnitude)."""
    got = np.asarray(got).astype(F64)
    ref = np.asarray(ref).astype(F64)
    info = ml_dtypes.finfo(dtype)
    ulp = np.maximum(np.abs(ref), float(info.smallest_normal)) * float(info.eps)
    bad = np.abs(got - ref) > ulps * ulp
    assert not bad.any(), f"{dtype}: {bad.sum()} values off by > {ulps} ulp: got {got[bad][:5]}, ref {ref[bad][:5]}"


def assert_sum_close(got, ref, abs_sum, dtype, rtol=None):
    """A sum matches its reference: float32/64 within rtol * sum|terms|, half types within 1 ulp
    (plus the float32 accumulation error)."""
    got = np.asarray(got)
    assert got.dtype == np.dtype(dtype), (got.dtype, dtype)
    if np.dtype(dtype) in (F32, F64):
        got64, ref64 = got.astype(F64), np.asarray(ref).astype(F64)
        rtol = rtol if rtol is not None else (1e-6 if np.dtype(dtype) == F32 else 1e-14)
        bad = np.abs(got64 - ref64) > rtol * np.asarray(abs_sum, F64) + 1e-300
        assert not bad.any(), f"{bad.sum()} values differ: got {got64[bad][:5]}, ref {ref64[bad][:5]}"
    else:
        half_ulp_close(got, ref, dtype)


# ---------------------------------------------------------------------------------------------------
# Strategies
# ---------------------------------------------------------------------------------------------------

dtypes = st.sampled_from(FLOAT_DTYPES)


@st.composite
def logits_st(draw, dtype=None, max_T=12, min_E=1, max_E=9, inf=True):
    """[T, E] logits: tied values from a small set or spread floats, some +-inf, never NaN, never a
    row of all -inf."""
    dtype = np.dtype(dtype) if dtype is not None else draw(dtypes)
    T, E = draw(st.integers(0, max_T)), draw(st.integers(min_E, max_E))
    values = list(TIE_VALUES)
    if inf:
        values += [np.inf, -np.inf]
    tied = st.sampled_from(values)
    spread = st.floats(-8, 8, allow_nan=False, width=32)
    element = draw(st.sampled_from([tied, spread, st.one_of(tied, spread)]))
    flat = draw(st.lists(element, min_size=T * E, max_size=T * E))
    x = np.array(flat, F64).reshape(T, E)
    for t in range(T):
        if np.all(x[t] == -np.inf):
            x[t, draw(st.integers(0, E - 1))] = draw(st.sampled_from(TIE_VALUES))
    return x.astype(dtype)


@st.composite
def big_logits_st(draw, dtype=None, max_T=40, min_E=9, max_E=80):
    """Larger [T, E] logits from a seeded generator (vectorized and large-k code paths): normal or
    tied values, a few +-inf, never NaN, never a row of all -inf."""
    dtype = np.dtype(dtype) if dtype is not None else draw(dtypes)
    T, E = draw(st.integers(0, max_T)), draw(st.integers(min_E, max_E))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if draw(st.booleans()):
        x = rng.normal(scale=3.0, size=(T, E))
    else:
        x = rng.choice(TIE_VALUES, size=(T, E))
    if draw(st.booleans()):
        x[rng.random((T, E)) < 0.03] = np.inf
        x[rng.random((T, E)) < 0.2] = -np.inf
        x[np.all(x == -np.inf, axis=1), 0] = 0.0
    return x.astype(dtype)


@st.composite
def bias_st(draw, E):
    values = draw(st.lists(st.sampled_from([-1.0, -0.25, 0.0, 0.125, 0.5, 2.0]), min_size=E, max_size=E))
    return np.array(values, F64).astype(draw(dtypes))


@st.composite
def capacity_options(draw, T, k, E, dropless=True, priority=None):
    """capacity / capacity_factor / min_capacity / capacity_multiple / priority, or dropless."""
    mode = draw(st.sampled_from(["dropless", "capacity", "factor"] if dropless else ["capacity", "factor"]))
    opts = {}
    if mode == "capacity":
        opts["capacity"] = draw(st.integers(0, max(1, T * k // E + 2)))
    elif mode == "factor":
        opts["capacity_factor"] = draw(st.sampled_from(CAPACITY_FACTORS))
    if mode != "dropless":
        if draw(st.booleans()):
            opts["min_capacity"] = draw(st.integers(0, 3))
        if draw(st.booleans()):
            opts["capacity_multiple"] = draw(st.integers(1, 4))
        opts["priority"] = priority or draw(st.sampled_from(["slot", "token", "score"]))
    if draw(st.booleans()):
        opts["pad_to"] = draw(st.integers(1, 4))
    return opts


@st.composite
def route_case(draw, dtype=None, groups=None, inf=True, max_T=12, max_E=9, dropless=True, normalize=None,
               priority=None, min_k=1, big=False):
    """(logits, k, options) for moeroute.route covering every option. groups: None = sometimes,
    True = always, False = never; dropless=False forces a capacity; normalize/priority force a value;
    big: logits from big_logits_st."""
    if big:
        logits = draw(big_logits_st(dtype=dtype))
    else:
        logits = draw(logits_st(dtype=dtype, inf=inf, max_T=max_T, max_E=max_E,
                                min_E=4 if groups else min_k))
    T, E = logits.shape
    opts = {"score": draw(st.sampled_from(["softmax", "sigmoid"])),
            "normalize": normalize or draw(st.sampled_from(["none", "topk", "kept"])),
            "scale": draw(st.sampled_from([1.0, 1.0, 2.5, 0.25]))}
    if draw(st.booleans()):
        opts["bias"] = draw(bias_st(E))
    k_max = E
    if groups or (groups is None and E > 1 and draw(st.booleans())):
        divisors = [d for d in range(1, E + 1) if E % d == 0 and (not groups or 1 < d < E)]
        num_groups = draw(st.sampled_from(divisors or [E]))
        topk_groups = draw(st.integers(1, num_groups))
        opts.update(num_groups=num_groups, topk_groups=topk_groups)
        k_max = topk_groups * (E // num_groups)
    k = draw(st.one_of(st.just(k_max), st.integers(min(min_k, k_max), k_max)))
    opts.update(draw(capacity_options(T, k, E, dropless=dropless, priority=priority)))
    return logits, k, opts


@st.composite
def activations(draw, rows, H=None, dtype=None):
    """A [rows, H] array of random values of a float dtype (drawn from a hypothesis-chosen seed)."""
    dtype = np.dtype(dtype) if dtype is not None else draw(dtypes)
    H = H if H is not None else draw(st.one_of(st.integers(1, 6), st.integers(7, 70)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return rng.uniform(-4, 4, size=(rows, H)).astype(dtype)


# ---------------------------------------------------------------------------------------------------
# Plan checks
# ---------------------------------------------------------------------------------------------------

DECISIONS = ("expert_ids", "dest", "src", "expert_offsets", "tokens_per_expert", "assigned_per_expert")
FIELD_DTYPES = dict(expert_ids=np.int32, dest=np.int32, src=np.int32, expert_offsets=np.int64,
                    tokens_per_expert=np.int64, assigned_per_expert=np.int64)


def score_dtype(dtype):
    return F64 if np.dtype(dtype) == F64 else F32


def assert_probs_close(probs, ref, logits_dtype):
    """plan.probs has the score dtype and matches the float64 reference scores."""
    assert probs.dtype == score_dtype(logits_dtype), probs.dtype
    if probs.dtype == F64:
        np.testing.assert_allclose(probs, ref, rtol=1e-12, atol=1e-15)
    else:
        np.testing.assert_allclose(probs, ref, rtol=1e-5, atol=1e-7)


def assert_weights_close(got, ref):
    assert got.dtype == ref.dtype, (got.dtype, ref.dtype)
    if got.dtype == F64:
        np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-15)
    else:
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-7)


def assert_plan_matches(plan, candidates):
    """Routing decisions equal one of the reference candidates exactly (candidates differ only in the
    precision of the selection arithmetic, which matters only for near-ties); weights within tolerance."""
    for name, dtype in FIELD_DTYPES.items():
        assert getattr(plan, name).dtype == dtype, (name, getattr(plan, name).dtype)
    for ref in candidates:
        if plan.capacity == ref["capacity"] and all(
                getattr(plan, f).shape == ref[f].shape and np.array_equal(getattr(plan, f), ref[f])
                for f in DECISIONS):
            break
    else:
        ref = candidates[0]
        assert plan.capacity == ref["capacity"], (plan.capacity, ref["capacity"])
        for f in DECISIONS:
            np.testing.assert_array_equal(getattr(plan, f), ref[f], err_msg=f)
    assert_weights_close(plan.weights, ref["weights"])


@st.composite
def plan_st(draw, dtype=None, inf=True, max_T=10, max_E=6, **route_options):
    """A RoutingPlan from route (options as in route_case) or expert_choice, with its logits."""
    if route_options or draw(st.booleans()):
        logits, k, opts = draw(route_case(dtype=dtype, inf=inf, max_T=max_T, max_E=max_E, **route_options))
        return moeroute.route(logits, k, **opts), logits
    logits = draw(logits_st(dtype=dtype, inf=inf, max_T=max_T, max_E=max_E))
    if draw(st.booleans()):
        return moeroute.expert_choice(logits, capacity=draw(st.integers(0, logits.shape[0] + 2))), logits
    return moeroute.expert_choice(logits, capacity_factor=draw(st.sampled_from(CAPACITY_FACTORS))), logits


def pytest_terminal_summary(terminalreporter):
    """Says why tests were skipped: without a CUDA device, the GPU suite (-m gpu) is skipped."""
    skipped = terminalreporter.stats.get("skipped", [])
    gpu = sum(1 for report in skipped if "gpu" in getattr(report, "keywords", {}))
    if gpu:
        terminalreporter.write_line(
            f"{gpu} skipped tests are the GPU suite (tests/test_cuda.py and the gpu-marked tests of other files): "
            f"they need a CUDA device; on a "
            f"machine with an NVIDIA GPU run `python -m pytest -q -m gpu tests`.")
    if len(skipped) > gpu:
        terminalreporter.write_line(f"{len(skipped) - gpu} other tests skipped: `pytest -rs` lists why.")
