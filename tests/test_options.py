"""RouteOptions: checked once when built, immutable, comparable, picklable, and the same plan as
route's keyword arguments."""

import pickle

import numpy as np
import pytest

import moeroute
from moeroute import ArgumentError, DTypeError, RouteOptions, ShapeError

LOGITS = np.random.default_rng(3).standard_normal((12, 6)).astype(np.float32)


@pytest.mark.parametrize("kwargs", [
    dict(), dict(capacity_factor=1.25, priority="score"), dict(score="sigmoid", normalize="kept", capacity=3),
    dict(num_groups=2, topk_groups=1, bias=[0.1, 0.0, -0.1, 0.2, 0.0, 0.3]), dict(pad_to=4, scale=2.0),
])
def test_route_with_options_is_route(kwargs):
    options = RouteOptions(2, **kwargs)
    plan, want = moeroute.route_with_options(LOGITS, options), moeroute.route(LOGITS, 2, **kwargs)
    for name in moeroute.plan.FIELD_NAMES:
        np.testing.assert_array_equal(getattr(plan, name), getattr(want, name), err_msg=name)
    assert (plan.capacity, plan.score, plan.normalize, plan.scale) == (want.capacity, want.score, want.normalize,
                                                                        want.scale)


@pytest.mark.parametrize("kwargs, error, name", [
    (dict(k=1.5), DTypeError, "k"), (dict(k=2, score="relu"), ArgumentError, "score"),
    (dict(k=2, scale=float("nan")), ArgumentError, "scale"), (dict(k=2, capacity=-1), ArgumentError, "capacity"),
    (dict(k=2, capacity_factor=0.0), ArgumentError, "capacity_factor"),
    (dict(k=2, pad_to=0), ArgumentError, "pad_to"), (dict(k=2, bias=[[0.0]]), ShapeError, "bias"),
    (dict(k=2, bias=[0.0, float("inf")]), ArgumentError, "bias"), (dict(k=2, bias=[1, 2]), DTypeError, "bias"),
])
def test_bad_options_raise_when_built(kwargs, error, name):
    with pytest.raises(error, match=rf"\b{name}\b"):
        RouteOptions(**kwargs)


def test_checks_that_need_the_experts_run_per_call():
    with pytest.raises(ArgumentError, match=r"\bk\b"):
        moeroute.route_with_options(LOGITS, RouteOptions(7))
    with pytest.raises(ShapeError, match="bias"):
        moeroute.route_with_options(LOGITS, RouteOptions(2, bias=[0.0, 1.0]))


def test_immutable_comparable_picklable():
    options = RouteOptions(2, capacity_factor=1.25, bias=[0.0, 1.0, 0.0, 0.0, 0.0, 0.0])
    with pytest.raises(AttributeError):
        options.k = 3
    assert options.bias.flags.writeable is False
    copy = pickle.loads(pickle.dumps(options))
    assert copy == options and hash(copy) == hash(options) and copy == options.replace()
    assert options.replace(capacity_factor=None).dropless and not options.dropless
    assert options != RouteOptions(2, capacity_factor=1.5, bias=options.bias)
    assert "capacity_factor=1.25" in repr(options) and "priority" not in repr(options)


def test_route_signatures_are_route_options_signature():
    """Every route function takes exactly RouteOptions' parameters, with the same defaults (the
    signature is written twice, in options.py, for editors and type checkers: this keeps them equal)."""
    import inspect

    import moeroute.numpy

    want = [(p.name, p.kind, p.default) for p in inspect.signature(RouteOptions).parameters.values()]
    fronts = [moeroute.route, moeroute.numpy.route]
    try:
        import moeroute.torch
        fronts.append(moeroute.torch.route)
    except ImportError:
        pass
    for route in fronts:
        params = list(inspect.signature(route).parameters.values())
        assert params[0].name == "logits"
        assert [(p.name, p.kind, p.default) for p in params[1:]] == want, route.__module__
