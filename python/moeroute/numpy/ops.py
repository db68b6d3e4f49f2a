"""The NumPy front: moeroute's ops on NumPy arrays. Checks and converts the arrays, calls the Rust
core, wraps its outputs; never imports torch (tensors go through moeroute.torch)."""

from __future__ import annotations

from typing import Any, Optional, Tuple

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .. import _core
from .._checks import (accumulation_name, expect_logits_shape, expect_picks_shape, expect_rows,
                       expect_weights_shape, integer, optional_integer, real)
from ..errors import DTypeError, ShapeError
from ..options import RouteOptions, picks_options, route_function
from ..plan import RoutingPlan, expect_plan, expect_routed_plan
from ._convert import activation, expect_ndim, float_array, restore

# The plans of this front: NumPy arrays.
NumpyPlan = RoutingPlan[NDArray[Any]]


def route_with_options(logits: ArrayLike, options: RouteOptions) -> NumpyPlan:
    """`route` with its options built once (see moeroute.RouteOptions)."""
    storage, dtype_name, _ = activation(logits, "logits", ndim=2)
    options.check_experts(storage.shape[1], dtype_name == "float64")
    bias = options.bias
    if bias is not None and not isinstance(bias, np.ndarray):  # a CPU tensor's values
        bias = np.asarray(bias.tolist(), dtype=np.float64)
    return RoutingPlan._from_core(_core.route(storage, dtype_name, options, bias), options.score,
                                  options.normalize, options.scale)


route = route_function(route_with_options, __name__)


def expert_choice(logits: ArrayLike, *, capacity_factor: float = 1.0, capacity: Optional[int] = None) -> NumpyPlan:
    """Expert-choice routing (Zhou et al. 2022): each expert takes its C highest-probability tokens.

    Args:
        logits: (T, E) float router logits; probs = softmax over experts.
        capacity_factor: C = ceil(T * capacity_factor / E) when capacity is None.
        capacity: tokens per expert.

    Returns:
        RoutingPlan with S = E slots: slot e of a token is expert e (expert_ids[t, e] = e if expert e
        took token t, else -1), weights[t, e] = probs[t, e] where taken, R = E * C rows.

    Example:
        >>> import numpy as np, moeroute
        >>> plan = moeroute.expert_choice(np.array([[2.0, 0.0], [0.0, 1.0]]), capacity=1)
        >>> plan.src.tolist()
        [0, 1]
    """
    capacity = optional_integer(capacity, "capacity", 0)
    capacity_factor = real(capacity_factor, "capacity_factor")
    storage, dtype_name, _ = activation(logits, "logits", ndim=2)
    return RoutingPlan._from_core(_core.expert_choice(storage, dtype_name, capacity, capacity_factor),
                                  "softmax", "none", 1.0)


def plan_from_topk(expert_ids: ArrayLike, weights: ArrayLike, num_experts: int, *, capacity: Optional[int] = None,
                   capacity_factor: Optional[float] = None, min_capacity: int = 0, capacity_multiple: int = 1,
                   priority: str = "slot", pad_to: int = 1) -> NumpyPlan:
    """The RoutingPlan of picks made elsewhere (a model's own router): the experts and weights are
    given, and laid out into rows exactly as `route` lays out its own picks.

    Args:
        expert_ids: (T, k) integers, the expert of each pick. An id outside [0, num_experts) (e.g.
            -1, or an expert-parallel sentinel >= num_experts) is an unused slot: expert_ids -1,
            no row, weight 0. A token may pick an expert more than once (its rows follow slot order).
        weights: (T, k) float combine weights of the picks (float32 / float64 / float16 / bfloat16).
        num_experts: E.
        capacity, capacity_factor, min_capacity, capacity_multiple, priority, pad_to: as in
            `route` (capacity_factor counts the k slots of every token); "score" priority ranks
            picks by their given weight.

    Returns:
        RoutingPlan with score "given": weights are the given ones in the accumulation dtype
        (float32, float64 for float64 weights), 0 where dropped or unused; probs[t, e] the sum of
        token t's given weights for expert e (0 for experts it did not pick).

    Example:
        >>> import numpy as np, moeroute
        >>> plan = moeroute.plan_from_topk(np.array([[1, 0], [1, 3]]), np.array([[0.7, 0.3], [1.0, 0.5]]), 2)
        >>> plan.src.tolist(), plan.dest.tolist(), plan.weights.tolist()
        ([0, 0, 1, -1], [[1, 0], [2, -1]], [[0.7, 0.3], [1.0, 0.0]])
    """
    options = picks_options(capacity, capacity_factor, min_capacity, capacity_multiple, priority, pad_to)
    num_experts = integer(num_experts, "num_experts", 1)
    ids = expert_ids if isinstance(expert_ids, np.ndarray) else np.asarray(expert_ids)
    if ids.dtype.kind not in "iu":
        raise DTypeError(f"expert_ids: got dtype {ids.dtype}, expected an integer array")
    expect_ndim(ids, "expert_ids", 2)
    storage, dtype_name, _ = activation(weights, "weights", ndim=2)
    expect_picks_shape(storage.shape, ids.shape)
    # (ids beyond int64 are out of range either way: as int64 they stay out of [0, num_experts))
    ids64 = np.ascontiguousarray(ids.astype(np.int64, copy=False))
    return RoutingPlan._from_core(_core.plan_from_topk(ids64, storage, dtype_name, num_experts, options),
                                  "given", "none", 1.0)


def permute(x: ArrayLike, plan: NumpyPlan) -> NDArray[Any]:
    """Gathers token rows into expert-contiguous rows: xp[r] = x[plan.src[r]], padding rows 0.

    Args:
        x: (T, H) float activations.
        plan: the RoutingPlan of these T tokens.

    Returns:
        xp: (R, H), dtype of x.
    """
    plan = expect_plan(plan, tensors=False)
    storage, dtype_name, dtype = activation(x, "x", ndim=2)
    expect_rows("x", storage.shape, plan.num_tokens, "T = plan.num_tokens")
    return restore(_core.permute(storage, dtype_name, plan.src), dtype)


def _weights(weights: Optional[ArrayLike], plan: NumpyPlan, dtype_name: str) -> NDArray[Any]:
    """The combine weights in the accumulation dtype: the plan's own, or checked (T, S) weights."""
    acc = np.dtype(accumulation_name(dtype_name))
    if weights is None:
        return np.ascontiguousarray(plan.weights, dtype=acc)
    given = weights if isinstance(weights, np.ndarray) else np.asarray(weights)
    if given.dtype not in (np.float32, np.float64):
        raise DTypeError(f"weights: got dtype {given.dtype}, expected float32 or float64")
    w = float_array(given, "weights", acc, ndim=2)
    expect_weights_shape(w.shape, plan.expert_ids.shape)
    return w


def combine(yp: ArrayLike, plan: NumpyPlan, weights: Optional[ArrayLike] = None) -> NDArray[Any]:
    """Scatters expert outputs back to tokens: y[t] = sum over kept slots of w[t,s] * yp[dest[t,s]].

    Summed in slot order, accumulated in float32 (float64 for float64 yp).

    Args:
        yp: (R, H) float expert outputs, rows as laid out by `permute`.
        plan: the RoutingPlan.
        weights: (T, S) float weights; default plan.weights.

    Returns:
        y: (T, H), dtype of yp.
    """
    plan = expect_plan(plan, tensors=False)
    storage, dtype_name, dtype = activation(yp, "yp", ndim=2)
    expect_rows("yp", storage.shape, plan.num_rows, "R = plan.num_rows")
    w = _weights(weights, plan, dtype_name)
    return restore(_core.combine(storage, dtype_name, plan.dest, w), dtype)


def permute_backward(grad_xp: ArrayLike, plan: NumpyPlan) -> NDArray[Any]:
    """Gradient of permute: grad_x[t] = sum over kept slots of grad_xp[dest[t,s]].

    Args:
        grad_xp: (R, H) float gradient of xp.
        plan: the RoutingPlan.

    Returns:
        grad_x: (T, H), dtype of grad_xp.
    """
    plan = expect_plan(plan, tensors=False)
    storage, dtype_name, dtype = activation(grad_xp, "grad_xp", ndim=2)
    expect_rows("grad_xp", storage.shape, plan.num_rows, "R = plan.num_rows")
    return restore(_core.permute_backward(storage, dtype_name, plan.dest), dtype)


def combine_backward(grad_y: ArrayLike, yp: ArrayLike, plan: NumpyPlan,
                     weights: Optional[ArrayLike] = None) -> Tuple[NDArray[Any], NDArray[Any]]:
    """Gradient of combine w.r.t. yp and the weights.

    Args:
        grad_y: (T, H) gradient of y, same dtype as yp.
        yp: (R, H) the expert outputs combine read.
        plan: the RoutingPlan.
        weights: (T, S) the weights combine used; default plan.weights.

    Returns:
        grad_yp: (R, H), dtype of yp: grad_yp[dest[t,s]] = w[t,s] * grad_y[t], padding rows 0.
        grad_weights: (T, S), dtype of the weights: <grad_y[t], yp[dest[t,s]]>, 0 where dropped.
    """
    plan = expect_plan(plan, tensors=False)
    yp_storage, dtype_name, dtype = activation(yp, "yp", ndim=2)
    gy_storage, gy_dtype_name, _ = activation(grad_y, "grad_y", ndim=2)
    if gy_dtype_name != dtype_name:
        raise DTypeError(f"grad_y: got dtype {gy_dtype_name}, expected the dtype of yp ({dtype_name})")
    expect_rows("yp", yp_storage.shape, plan.num_rows, "R = plan.num_rows")
    expect_rows("grad_y", gy_storage.shape, plan.num_tokens, "T = plan.num_tokens")
    if gy_storage.shape[1] != yp_storage.shape[1]:
        raise ShapeError(f"grad_y: got shape {list(gy_storage.shape)}, expected [{plan.num_tokens}, {yp_storage.shape[1]}] (H of yp)")
    w = _weights(weights, plan, dtype_name)
    grad_yp, grad_w = _core.combine_backward(gy_storage, yp_storage, dtype_name, plan.dest, plan.src, w)
    weights_dtype = plan.weights.dtype if weights is None else np.asarray(weights).dtype
    return restore(grad_yp, dtype), grad_w.astype(weights_dtype, copy=False)


def route_backward(grad_weights: ArrayLike, plan: NumpyPlan, logits: ArrayLike) -> NDArray[Any]:
    """Gradient of the plan's weights w.r.t. the logits (selection is piecewise constant).

    Args:
        grad_weights: (T, S) float gradient of plan.weights.
        plan: the RoutingPlan that route / expert_choice made from `logits`.
        logits: (T, E) the logits the plan was routed from.

    Returns:
        grad_logits: (T, E), dtype of logits.
    """
    plan = expect_plan(plan, tensors=False)
    expect_routed_plan(plan)
    storage, _, dtype = activation(logits, "logits", ndim=2)
    expect_logits_shape(storage.shape, plan.probs.shape)
    g = float_array(grad_weights, "grad_weights", plan.probs.dtype, ndim=2)
    grad = _core.route_backward(g, None, plan.probs, plan.expert_ids, plan.dest, plan.score,
                                plan.normalize, plan.scale)
    return grad.astype(dtype, copy=False)
