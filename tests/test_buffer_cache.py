"""The output buffer cache: outputs are reused after they die, bounded by the limit, and correct."""

import numpy as np
import pytest

import moeroute


def _plan_and_x(tokens=64, hidden=32):
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((tokens, 8)).astype(np.float32)
    return moeroute.route(logits, 2), rng.standard_normal((tokens, hidden)).astype(np.float32)


def test_freed_outputs_are_cached_and_reused_with_correct_results():
    plan, x = _plan_and_x()
    moeroute.set_buffer_cache_limit(1 << 30)
    first = moeroute.permute(x, plan)
    expected = first.copy()
    del first
    cached, limit = moeroute.buffer_cache_info()
    assert cached >= expected.nbytes and limit == 1 << 30
    second = moeroute.permute(x, plan)  # reuses the cached block: every row is rewritten
    np.testing.assert_array_equal(second, expected)
    assert moeroute.buffer_cache_info()[0] == cached - expected.nbytes


def test_limit_bounds_and_clears_the_cache():
    plan, x = _plan_and_x()
    out = moeroute.permute(x, plan)
    del out
    moeroute.set_buffer_cache_limit(0)
    assert moeroute.buffer_cache_info() == (0, 0)
    out = moeroute.permute(x, plan)
    del out
    assert moeroute.buffer_cache_info()[0] == 0
    moeroute.set_buffer_cache_limit(1 << 30)


def test_bad_limit_is_an_argument_error_and_keeps_the_limit():
    limit = moeroute.buffer_cache_info()[1]
    for bad in (-1, 2**63, 10**30):
        with pytest.raises(moeroute.ArgumentError,
                           match=rf"limit_bytes: got {bad}, expected an integer from 0 to {2**63 - 1}"):
            moeroute.set_buffer_cache_limit(bad)
    with pytest.raises(moeroute.DTypeError, match="limit_bytes: got float"):
        moeroute.set_buffer_cache_limit(1.0)
    assert moeroute.buffer_cache_info()[1] == limit
    moeroute.set_buffer_cache_limit(limit_bytes=2**63 - 1)
    assert moeroute.buffer_cache_info()[1] == 2**63 - 1
    moeroute.set_buffer_cache_limit(limit)
    assert moeroute.buffer_cache_info()[1] == limit


def test_outputs_are_writable_contiguous_and_outlive_their_plan():
    plan, x = _plan_and_x()
    y = moeroute.combine(moeroute.permute(x, plan), plan)
    del plan
    assert y.flags.c_contiguous and y.flags.writeable and y.flags.aligned
    y[:] = 1.0
    assert float(y.sum()) == y.size
