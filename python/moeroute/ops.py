"""The NumPy front of the routing ops: converts and checks arguments, calls the Rust core."""

from __future__ import annotations

from typing import Any, Optional, Tuple

import numpy as np

from . import _core
from ._arrays import (accumulation_dtype, activation, choice, float_array, integer,
                      is_torch, optional_integer, real, restore)
from .errors import ArgumentError, DTypeError, ShapeError
from .plan import NORMALIZATIONS, SCORES, RoutingPlan

PRIORITIES = ("slot", "token", "score")


def route(
    logits: Any,
    k: int,
    *,
    score: str = "softmax",
    normalize: str = "topk",
    scale: float = 1.0,
    bias: Any = None,
    num_groups: Optional[int] = None,
    topk_groups: Optional[int] = None,
    capacity: Optional[int] = None,
    capacity_factor: Optional[float] = None,
    min_capacity: int = 0,
    capacity_multiple: int = 1,
    priority: str = "slot",
    pad_to: int = 1,
) -> RoutingPlan:
    """Token-choice routing: each token picks its k best experts; capacity decides which picks fit.

    Args:
        logits: (T, E) float32 / float64 / float16 / bfloat16 router logits.
        k: experts per token, in [1, E].
        score: "softmax" (over experts) or "sigmoid" (per expert).
        normalize: "none" (raw scores), "topk" (divided by the sum of the k picked scores) or
            "kept" (divided by the sum of the kept picks' scores, after capacity).
        scale: multiplies the weights.
        bias: (E,) selection-only bias added to the scores before top-k (DeepSeek-V3).
        num_groups, topk_groups: group-limited routing (both or neither).
        capacity: rows per expert; or capacity_factor: C = ceil(capacity_factor * T * k / E).
            Neither: dropless.
        min_capacity, capacity_multiple: C = max(C, min_capacity) rounded up to a multiple.
        priority: which picks an over-full expert keeps: "slot", "token" or "score".
        pad_to: dropless only: each expert's segment is rounded up to a multiple of pad_to.

    Returns:
        RoutingPlan with T tokens, E experts, S = k slots.

    Raises:
        ShapeError, DTypeError, ArgumentError, LogitsError, IndexOverflowError.

    Example:
        >>> import numpy as np, moeroute
        >>> logits = np.array([[0.0, 2.0, 1.0], [3.0, 0.0, 0.0]], np.float32)
        >>> plan = moeroute.route(logits, k=1, capacity=1)
        >>> plan.expert_ids.tolist(), plan.src.tolist()
        ([[1], [0]], [1, 0, -1])
    """
    args = (score, normalize, scale, bias, num_groups, topk_groups, capacity, capacity_factor,
            min_capacity, capacity_multiple, priority, pad_to)
    if is_torch(logits):
        _front = _torch_front()
        _front.check_activation(logits, "logits")
        return _front.route(logits, _route_options(k, logits.shape[1], *args))
    storage, dtype_name, _ = activation(logits, "logits", ndim=2)
    options = _route_options(k, storage.shape[1], *args)
    if options[4] is not None:
        options = options[:4] + (options[4].tolist(),) + options[5:]
    return RoutingPlan._from_core(_core.route(storage, dtype_name, *options), score, normalize, scale)


def _torch_front():
    """moeroute.torch._front, imported on first use (only torch users pay for importing torch)."""
    global _FRONT
    if _FRONT is None:
        from .torch import _front
        _FRONT = _front
    return _FRONT


_FRONT = None


_CHECKED_OPTIONS: dict = {}


def _route_options(k, num_experts, *options) -> tuple:
    """Checked scalar options of route, in the order of the core's signature (after dtype). Options
    without a bias are checked once per distinct (value, type) combination and remembered."""
    if options[3] is not None:
        return _check_route_options(k, num_experts, *options)
    key = (k, num_experts, *options, type(k), *map(type, options))
    try:
        checked = _CHECKED_OPTIONS.get(key)
    except TypeError:  # an unhashable (so invalid) option: the checks below name it
        return _check_route_options(k, num_experts, *options)
    if checked is None:
        checked = _check_route_options(k, num_experts, *options)
        if len(_CHECKED_OPTIONS) < 256:
            _CHECKED_OPTIONS[key] = checked
    return checked


def _check_route_options(k, num_experts, score, normalize, scale, bias, num_groups, topk_groups, capacity,
                         capacity_factor, min_capacity, capacity_multiple, priority, pad_to) -> tuple:
    k = integer(k, "k")
    if not 1 <= k <= max(num_experts, 1):
        raise ArgumentError(f"k: got {k}, expected an integer in [1, {num_experts}] (the number of experts)")
    if bias is not None and is_torch(bias):
        # A tensor bias stays a tensor (no host round trip for a device bias, and nothing that
        # torch.compile cannot trace): its values are checked by the kernel (the CPU core rejects
        # non-finite ones; the CUDA kernel does not check them).
        if not bias.dtype.is_floating_point:
            raise DTypeError(f"bias: got dtype {bias.dtype}, expected a float tensor")
        if bias.dim() != 1 or bias.shape[0] != num_experts:
            raise ShapeError(f"bias: got shape {list(bias.shape)}, expected [{num_experts}] (one per expert)")
    elif bias is not None:
        bias = float_array(bias, "bias", np.float64, ndim=1)
    return (
        k, choice(score, "score", SCORES), choice(normalize, "normalize", NORMALIZATIONS),
        real(scale, "scale"), bias,
        optional_integer(num_groups, "num_groups", 1), optional_integer(topk_groups, "topk_groups", 1),
        optional_integer(capacity, "capacity", 0),
        None if capacity_factor is None else real(capacity_factor, "capacity_factor"),
        integer(min_capacity, "min_capacity", 0), integer(capacity_multiple, "capacity_multiple", 1),
        choice(priority, "priority", PRIORITIES), integer(pad_to, "pad_to", 1),
    )


def expert_choice(logits: Any, *, capacity_factor: float = 1.0, capacity: Optional[int] = None) -> RoutingPlan:
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
    if is_torch(logits):
        _front = _torch_front()
        return _front.expert_choice(logits, capacity, capacity_factor)
    storage, dtype_name, _ = activation(logits, "logits", ndim=2)
    return RoutingPlan._from_core(_core.expert_choice(storage, dtype_name, capacity, capacity_factor),
                                  "softmax", "none", 1.0)


def _check_plan(plan: Any) -> RoutingPlan:
    if not isinstance(plan, RoutingPlan):
        raise DTypeError(f"plan: got {type(plan).__name__}, expected a moeroute.RoutingPlan")
    return plan


def _expect_rows(name: str, array: np.ndarray, rows: int, what: str) -> None:
    if array.shape[0] != rows:
        raise ShapeError(f"{name}: got shape {list(array.shape)}, expected [{rows}, H] ({what})")


def permute(x: Any, plan: RoutingPlan) -> np.ndarray:
    """Gathers token rows into expert-contiguous rows: xp[r] = x[plan.src[r]], padding rows 0.

    Args:
        x: (T, H) float activations.
        plan: the RoutingPlan of these T tokens.

    Returns:
        xp: (R, H), dtype of x.
    """
    plan = _check_plan(plan)
    if is_torch(x):
        _front = _torch_front()
        return _front.permute(x, plan)
    storage, dtype_name, dtype = activation(x, "x", ndim=2)
    _expect_rows("x", storage, plan.num_tokens, "T = plan.num_tokens")
    return restore(_core.permute(storage, dtype_name, plan.src), dtype)


def _weights(weights: Any, plan: RoutingPlan, dtype_name: str) -> np.ndarray:
    acc = accumulation_dtype(dtype_name)
    if weights is None:
        return np.ascontiguousarray(plan.weights, dtype=acc)
    given = weights if isinstance(weights, np.ndarray) else np.asarray(weights)
    if given.dtype not in (np.float32, np.float64):
        raise DTypeError(f"weights: got dtype {given.dtype}, expected float32 or float64")
    w = float_array(given, "weights", acc, ndim=2)
    if w.shape != plan.expert_ids.shape:
        raise ShapeError(f"weights: got shape {list(w.shape)}, expected {list(plan.expert_ids.shape)} (T, S)")
    return w


def combine(yp: Any, plan: RoutingPlan, weights: Any = None) -> np.ndarray:
    """Scatters expert outputs back to tokens: y[t] = sum over kept slots of w[t,s] * yp[dest[t,s]].

    Summed in slot order, accumulated in float32 (float64 for float64 yp).

    Args:
        yp: (R, H) float expert outputs, rows as laid out by `permute`.
        plan: the RoutingPlan.
        weights: (T, S) float weights; default plan.weights.

    Returns:
        y: (T, H), dtype of yp.
    """
    plan = _check_plan(plan)
    if is_torch(yp):
        _front = _torch_front()
        return _front.combine(yp, plan, weights)
    storage, dtype_name, dtype = activation(yp, "yp", ndim=2)
    _expect_rows("yp", storage, plan.num_rows, "R = plan.num_rows")
    w = _weights(weights, plan, dtype_name)
    return restore(_core.combine(storage, dtype_name, plan.dest, w), dtype)


def permute_backward(grad_xp: Any, plan: RoutingPlan) -> np.ndarray:
    """Gradient of permute: grad_x[t] = sum over kept slots of grad_xp[dest[t,s]].

    Args:
        grad_xp: (R, H) float gradient of xp.
        plan: the RoutingPlan.

    Returns:
        grad_x: (T, H), dtype of grad_xp.
    """
    plan = _check_plan(plan)
    if is_torch(grad_xp):
        _front = _torch_front()
        return _front.permute_backward(grad_xp, plan)
    storage, dtype_name, dtype = activation(grad_xp, "grad_xp", ndim=2)
    _expect_rows("grad_xp", storage, plan.num_rows, "R = plan.num_rows")
    return restore(_core.permute_backward(storage, dtype_name, plan.dest), dtype)


def combine_backward(grad_y: Any, yp: Any, plan: RoutingPlan, weights: Any = None) -> Tuple[np.ndarray, np.ndarray]:
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
    plan = _check_plan(plan)
    if is_torch(yp):
        _front = _torch_front()
        return _front.combine_backward(grad_y, yp, plan, weights)
    yp_storage, dtype_name, dtype = activation(yp, "yp", ndim=2)
    gy_storage, gy_dtype_name, _ = activation(grad_y, "grad_y", ndim=2)
    if gy_dtype_name != dtype_name:
        raise DTypeError(f"grad_y: got dtype {gy_dtype_name}, expected the dtype of yp ({dtype_name})")
    _expect_rows("yp", yp_storage, plan.num_rows, "R = plan.num_rows")
    _expect_rows("grad_y", gy_storage, plan.num_tokens, "T = plan.num_tokens")
    if gy_storage.shape[1] != yp_storage.shape[1]:
        raise ShapeError(f"grad_y: got shape {list(gy_storage.shape)}, expected [{plan.num_tokens}, {yp_storage.shape[1]}] (H of yp)")
    w = _weights(weights, plan, dtype_name)
    grad_yp, grad_w = _core.combine_backward(gy_storage, yp_storage, dtype_name, plan.dest, plan.src, w)
    weights_dtype = plan.weights.dtype if weights is None else np.asarray(weights).dtype
    return restore(grad_yp, dtype), grad_w.astype(weights_dtype, copy=False)


def route_backward(grad_weights: Any, plan: RoutingPlan, logits: Any) -> np.ndarray:
    """Gradient of the plan's weights w.r.t. the logits (selection is piecewise constant).

    Args:
        grad_weights: (T, S) float gradient of plan.weights.
        plan: the RoutingPlan that route / expert_choice made from `logits`.
        logits: (T, E) the logits the plan was routed from.

    Returns:
        grad_logits: (T, E), dtype of logits.
    """
    plan = _check_plan(plan)
    if is_torch(logits):
        _front = _torch_front()
        return _front.route_backward(grad_weights, plan, logits)
    storage, _, dtype = activation(logits, "logits", ndim=2)
    if storage.shape != plan.probs.shape:
        raise ShapeError(f"logits: got shape {list(storage.shape)}, expected {list(plan.probs.shape)} (the plan's T, E)")
    double = plan.probs.dtype == np.float64
    g = float_array(grad_weights, "grad_weights", plan.probs.dtype, ndim=2)
    grad = _core.route_backward(g, None, plan.probs, plan.expert_ids, plan.dest, plan.score,
                                plan.normalize, plan.scale, double)
    return grad.astype(dtype, copy=False)
