"""The CUDA ops' checked mode (moeroute.set_checks): its device checks raise exactly the CPU core's
errors — checked here on CPU tensors, since the checks are device-agnostic torch code — and the
switch changes nothing without a CUDA device. tests/test_cuda.py runs it on a GPU."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

import moeroute  # noqa: E402
from moeroute import _core  # noqa: E402
from moeroute.torch import _device_checks as checks  # noqa: E402

LOGITS = np.random.default_rng(7).standard_normal((9, 5)).astype(np.float32)


def core_error(fn):
    try:
        fn()
    except moeroute.MoerouteError as e:
        return type(e), str(e)
    return None


def device_error(fn):
    return core_error(fn)


@given(st.data())
def test_logit_checks_match_the_core(data):
    logits = LOGITS.copy()
    for _ in range(data.draw(st.integers(0, 3))):
        t, e = data.draw(st.integers(0, 8)), data.draw(st.integers(0, 4))
        logits[t, e] = data.draw(st.sampled_from([np.nan, -np.inf, np.inf, 0.0]))
    if data.draw(st.booleans()):
        logits[data.draw(st.integers(0, 8))] = -np.inf
    want = core_error(lambda: moeroute.route(logits, 2))
    got = device_error(lambda: checks.logits(torch.from_numpy(logits)))
    assert got == want
    assert device_error(lambda: checks.logits(torch.from_numpy(logits))) == core_error(
        lambda: moeroute.expert_choice(logits))


@given(st.lists(st.sampled_from([0.0, 1.5, -2.0, np.inf, -np.inf, np.nan]), min_size=5, max_size=5))
def test_bias_checks_match_the_core(values):
    bias = np.array(values)
    want = core_error(lambda: _core.route(LOGITS, "float32", moeroute.RouteOptions(2), bias))
    assert device_error(lambda: checks.bias(torch.from_numpy(bias))) == want


@given(st.data())
def test_plan_index_checks_match_the_core(data):
    plan = moeroute.route(LOGITS, 2, capacity=data.draw(st.sampled_from([2, 4, None])) or None)
    dest, src, ids = plan.dest.copy(), plan.src.copy(), plan.expert_ids.copy()
    for array, high in ((dest, plan.num_rows), (src, plan.num_tokens), (ids, plan.num_experts)):
        for _ in range(data.draw(st.integers(0, 2))):
            flat = array.reshape(-1)
            if flat.size:
                flat[data.draw(st.integers(0, flat.size - 1))] = data.draw(st.integers(-3, high + 2))
    h = 3
    yp = np.ones((plan.num_rows, h), np.float32)
    grad_y = np.ones((plan.num_tokens, h), np.float32)
    w = np.ascontiguousarray(plan.weights)
    td, ts, ti = torch.from_numpy(dest), torch.from_numpy(src), torch.from_numpy(ids)

    def combine_backward_checks():
        checks.dest(td, plan.num_rows)
        checks.src(ts, plan.num_tokens)
        checks.one_to_one(td, ts)

    assert device_error(combine_backward_checks) == core_error(
        lambda: _core.combine_backward(grad_y, yp, "float32", dest, src, w))
    assert device_error(lambda: checks.dest(td, plan.num_rows)) == core_error(
        lambda: _core.combine(yp, "float32", dest, w))
    assert device_error(lambda: checks.src(ts, plan.num_tokens)) == core_error(
        lambda: _core.permute(grad_y, "float32", src))
    assert device_error(lambda: checks.expert_ids(ti, plan.num_experts)) == core_error(
        lambda: _core.route_backward(w, None, plan.probs, ids, plan.dest, "softmax", "topk", 1.0))


def test_the_switch_changes_nothing_without_a_cuda_device():
    assert moeroute.get_checks() is False
    plan = moeroute.route(torch.from_numpy(LOGITS), 2, capacity=3)
    moeroute.set_checks(True)
    try:
        assert moeroute.get_checks() is True
        again = moeroute.route(torch.from_numpy(LOGITS), 2, capacity=3)
        assert torch.equal(again.dest, plan.dest)
        with pytest.raises(moeroute.DTypeError, match="enabled"):
            moeroute.set_checks("yes")
    finally:
        moeroute.set_checks(False)
