"""Route's options as one frozen, checked object (RouteOptions), and plan_from_topk's layout options
(PicksOptions), shared by the NumPy and torch fronts and handed to the core by name."""

from __future__ import annotations

import inspect
import math
from typing import TYPE_CHECKING, Any, Callable, Dict, NamedTuple, Optional, Protocol, Tuple, Union

import numpy as np

from ._checks import check_top_k, choice, integer, is_torch, optional_integer, real
from .errors import ArgumentError, DTypeError, ShapeError

from ._types import ArrayT

if TYPE_CHECKING:
    import torch
    from numpy.typing import ArrayLike, NDArray

    from .plan import RoutingPlan

    # route's bias: a tensor (kept as it is) or anything array-like (kept as a float64 array).
    BiasLike = Union[torch.Tensor, ArrayLike]

SCORES = ("softmax", "sigmoid")
# A plan's score: how route / expert_choice scored its logits, or "given" for plan_from_topk's
# plans (weights given by the caller, no logits).
PLAN_SCORES = SCORES + ("given",)
NORMALIZATIONS = ("none", "topk", "kept")
PRIORITIES = ("slot", "token", "score")
FLOAT32_MAX = float(np.finfo(np.float32).max)

# ------------------------------------------------------------------------------- PicksOptions

class PicksOptions(NamedTuple):
    """How plan_from_topk lays out given picks: route's capacity options (see RouteOptions),
    checked by `picks_options`; the core reads them by name."""
    capacity: Optional[int]
    capacity_factor: Optional[float]
    min_capacity: int
    capacity_multiple: int
    priority: str
    pad_to: int


def picks_options(capacity: Any = None, capacity_factor: Any = None, min_capacity: Any = 0,
                  capacity_multiple: Any = 1, priority: Any = "slot", pad_to: Any = 1) -> PicksOptions:
    """PicksOptions with each value checked (ArgumentError / DTypeError naming the bad argument);
    the core checks them together (at most one of capacity and capacity_factor) where it resolves
    the capacity. RouteOptions checks its own capacity options with this too."""
    return PicksOptions(
        optional_integer(capacity, "capacity", 0), _capacity_factor(capacity_factor),
        integer(min_capacity, "min_capacity", 0), integer(capacity_multiple, "capacity_multiple", 1),
        choice(priority, "priority", PRIORITIES), integer(pad_to, "pad_to", 1))


# ------------------------------------------------------------------------------- RouteOptions

# The option names, in the order of route's signature (after logits); the core reads them by name.
ROUTE_OPTION_NAMES = ("k", "score", "normalize", "scale", "bias", "num_groups", "topk_groups", "capacity",
                      "capacity_factor", "min_capacity", "capacity_multiple", "priority", "pad_to")


class RouteOptions:
    """Every option of token-choice routing (`moeroute.route`), checked once when built; immutable.

    A bias may be a tensor (kept as it is, on its device; its values are checked by the kernel) or
    anything array-like (a read-only float64 NumPy array). Checks that need the number of experts
    E (k <= E, the bias's length, groups dividing E) run per call in `check_experts`.

    Example:
        >>> import moeroute
        >>> options = moeroute.RouteOptions(2, capacity_factor=1.25)
        >>> options.k, options.dropless, options.replace(capacity_factor=None).dropless
        (2, False, True)
    """

    __slots__ = ROUTE_OPTION_NAMES

    k: int
    score: str
    normalize: str
    scale: float
    bias: Union[NDArray[np.float64], torch.Tensor, None]
    num_groups: Optional[int]
    topk_groups: Optional[int]
    capacity: Optional[int]
    capacity_factor: Optional[float]
    min_capacity: int
    capacity_multiple: int
    priority: str
    pad_to: int

    def __init__(
        self,
        k: int,
        *,
        score: str = "softmax",
        normalize: str = "topk",
        scale: float = 1.0,
        bias: Optional[BiasLike] = None,
        num_groups: Optional[int] = None,
        topk_groups: Optional[int] = None,
        capacity: Optional[int] = None,
        capacity_factor: Optional[float] = None,
        min_capacity: int = 0,
        capacity_multiple: int = 1,
        priority: str = "slot",
        pad_to: int = 1,
    ) -> None:
        values = (
            integer(k, "k"), choice(score, "score", SCORES), choice(normalize, "normalize", NORMALIZATIONS),
            _finite(real(scale, "scale"), "scale"), _bias(bias),
            optional_integer(num_groups, "num_groups", 1), optional_integer(topk_groups, "topk_groups", 1),
            *picks_options(capacity, capacity_factor, min_capacity, capacity_multiple, priority, pad_to),
        )
        if (values[5] is None) != (values[6] is None):
            raise ArgumentError(f"num_groups: got num_groups={values[5]}, topk_groups={values[6]}, expected both "
                                f"num_groups and topk_groups, or neither")
        for setter, value in zip(_SETTERS, values):
            setter(self, value)

    @classmethod
    def trusted(cls, **fields: Any) -> "RouteOptions":
        """Options from values that were checked before (e.g. a custom op's arguments, which came
        from a RouteOptions): built without checking them again."""
        options = object.__new__(cls)
        for setter, name in zip(_SETTERS, ROUTE_OPTION_NAMES):
            setter(options, fields[name])
        return options

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"RouteOptions is immutable: cannot set {name!r} (use replace())")

    @property
    def dropless(self) -> bool:
        """Whether every pick is kept (neither capacity nor capacity_factor)."""
        return self.capacity is None and self.capacity_factor is None

    def check_experts(self, num_experts: int, float64: bool = False) -> None:
        """The checks that need the logits: k in [1, E], a bias of E values, and a scale the plan's
        weights can hold (float32, or float64 for float64 logits). (Groups dividing E, and the row
        count fitting int32, are checked by the core, which owns the capacity rule.)"""
        check_top_k(self.k, num_experts)
        if not float64 and abs(self.scale) > FLOAT32_MAX:
            raise ArgumentError(f"scale: got {self.scale}, expected |scale| <= {FLOAT32_MAX} (the weights of "
                                f"non-float64 logits are float32)")
        bias = self.bias
        if bias is not None and (bias.ndim != 1 or bias.shape[0] != num_experts):
            raise ShapeError(f"bias: got shape {list(bias.shape)}, expected [{num_experts}] (one per expert)")

    def with_bias(self, bias: Optional[BiasLike]) -> "RouteOptions":
        """A copy with this bias (None: none), checking only the bias: e.g. a layer's live bias
        buffer, read at each call."""
        options = RouteOptions.trusted(**self.fields())
        _SETTERS[ROUTE_OPTION_NAMES.index("bias")](options, _bias(bias))
        return options

    def fields(self) -> Dict[str, Any]:
        """The options by name (e.g. as keyword arguments of the `moeroute::route` custom op)."""
        return {name: getattr(self, name) for name in ROUTE_OPTION_NAMES}

    def replace(self, **changes: Any) -> "RouteOptions":
        """A copy with some options changed (checked again)."""
        fields = self.fields()
        fields.update(changes)
        return RouteOptions(**fields)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RouteOptions):
            return NotImplemented
        return all(_same(getattr(self, n), getattr(other, n)) for n in ROUTE_OPTION_NAMES)

    def __hash__(self) -> int:
        bias = self.bias
        key = None if bias is None else bias.tobytes() if isinstance(bias, np.ndarray) else id(bias)
        return hash(tuple(getattr(self, n) for n in ROUTE_OPTION_NAMES if n != "bias") + (key,))

    def __repr__(self) -> str:
        given = ", ".join(f"{n}={getattr(self, n)!r}" for n in ROUTE_OPTION_NAMES[1:]
                          if not _same(getattr(self, n), _DEFAULTS[n]))
        return f"RouteOptions({self.k}{', ' if given else ''}{given})"

    def __reduce__(self) -> Any:
        return (_rebuild, (self.fields(),))


def _rebuild(fields: Dict[str, Any]) -> RouteOptions:
    return RouteOptions(**fields)


_SETTERS = tuple(getattr(RouteOptions, name).__set__ for name in ROUTE_OPTION_NAMES)
# The defaults of the options after k (for repr), as RouteOptions' signature gives them.
_DEFAULTS: Dict[str, Any] = {name: p.default for name, p in inspect.signature(RouteOptions).parameters.items()
                             if p.default is not inspect.Parameter.empty}


def _same(a: Any, b: Any) -> bool:
    if a is None or b is None or isinstance(a, (int, float, str)):
        return a is b or (type(a) is type(b) and a == b)
    return a is b or (isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and np.array_equal(a, b))


def _finite(value: float, name: str) -> float:
    if not math.isfinite(value):
        raise ArgumentError(f"{name}: got {value}, expected a finite number")
    return value


def _capacity_factor(value: Any) -> Optional[float]:
    if value is None:
        return None
    factor = real(value, "capacity_factor")
    if not (math.isfinite(factor) and factor > 0):
        raise ArgumentError(f"capacity_factor: got {factor}, expected a finite number > 0")
    return factor


def _bias(bias: Any) -> Union[NDArray[np.float64], torch.Tensor, None]:
    """None; a float tensor as it is; else a read-only 1-D float64 NumPy array of finite values."""
    if bias is None:
        return None
    if is_torch(bias):
        # A tensor bias stays a tensor (no host round trip for a device bias, and nothing that
        # torch.compile cannot trace): its values are checked by the kernel (the CPU core rejects
        # non-finite ones; the CUDA kernel does not check them).
        if not bias.dtype.is_floating_point:
            raise DTypeError(f"bias: got dtype {bias.dtype}, expected a float tensor")
        if bias.dim() != 1:
            raise ShapeError(f"bias: got shape {list(bias.shape)}, expected a 1-D tensor (one value per expert)")
        return bias
    array = bias if isinstance(bias, np.ndarray) else np.asarray(bias)
    if array.dtype.kind != "f" and array.dtype.name != "bfloat16":
        raise DTypeError(f"bias: got dtype {array.dtype}, expected a float array")
    if array.ndim != 1:
        raise ShapeError(f"bias: got shape {list(array.shape)}, expected a 1-D array (one value per expert)")
    array = np.array(array, dtype=np.float64, order="C")
    bad = ~np.isfinite(array)
    if bad.any():
        i = int(np.argmax(bad))
        raise ArgumentError(f"bias: got {array[i]} at expert {i}, expected finite values")
    array.flags.writeable = False
    return array


_CACHE: Dict[Tuple[Any, ...], RouteOptions] = {}


def route_options(k: Any, score: Any, normalize: Any, scale: Any, bias: Any, num_groups: Any, topk_groups: Any,
                  capacity: Any, capacity_factor: Any, min_capacity: Any, capacity_multiple: Any, priority: Any,
                  pad_to: Any) -> RouteOptions:
    """RouteOptions of route's arguments. Options without a bias are built and checked once per
    distinct (value, type) combination and remembered (a front's per-call cost is a dict lookup)."""
    key: Optional[Tuple[Any, ...]] = None
    if bias is None:
        key = (k, score, normalize, scale, num_groups, topk_groups, capacity, capacity_factor, min_capacity,
               capacity_multiple, priority, pad_to, type(k), type(scale), type(num_groups), type(topk_groups),
               type(capacity), type(capacity_factor), type(min_capacity), type(capacity_multiple), type(pad_to))
        try:
            options = _CACHE.get(key)
        except TypeError:  # an unhashable (so invalid) option: the checks name it
            key = None
            options = None
        if options is not None:
            return options
    options = RouteOptions(k, score=score, normalize=normalize, scale=scale, bias=bias, num_groups=num_groups,
                           topk_groups=topk_groups, capacity=capacity, capacity_factor=capacity_factor,
                           min_capacity=min_capacity, capacity_multiple=capacity_multiple, priority=priority,
                           pad_to=pad_to)
    if bias is None and key is not None and len(_CACHE) < 256:
        _CACHE[key] = options
    return options


class RouteFunction(Protocol[ArrayT]):
    """The type of a front's `route`: moeroute.numpy.route is a RouteFunction[np.ndarray] (NumPy logits,
    NumPy plan), moeroute.torch.route a RouteFunction[torch.Tensor]. (Its parameters are
    RouteOptions' and the run-time route's: tests/test_types.py keeps the three equal.)"""

    def __call__(
        self,
        logits: ArrayT,
        k: int,
        *,
        score: str = "softmax",
        normalize: str = "topk",
        scale: float = 1.0,
        bias: Optional[BiasLike] = None,
        num_groups: Optional[int] = None,
        topk_groups: Optional[int] = None,
        capacity: Optional[int] = None,
        capacity_factor: Optional[float] = None,
        min_capacity: int = 0,
        capacity_multiple: int = 1,
        priority: str = "slot",
        pad_to: int = 1,
    ) -> RoutingPlan[ArrayT]: ...


class DispatchRoute(Protocol):
    """The type of moeroute.route: NumPy logits give a RoutingPlan[np.ndarray], tensor logits a
    RoutingPlan[torch.Tensor] (ArrayT is either, per call)."""

    def __call__(
        self,
        logits: ArrayT,
        k: int,
        *,
        score: str = "softmax",
        normalize: str = "topk",
        scale: float = 1.0,
        bias: Optional[BiasLike] = None,
        num_groups: Optional[int] = None,
        topk_groups: Optional[int] = None,
        capacity: Optional[int] = None,
        capacity_factor: Optional[float] = None,
        min_capacity: int = 0,
        capacity_multiple: int = 1,
        priority: str = "slot",
        pad_to: int = 1,
    ) -> RoutingPlan[ArrayT]: ...


def route_function(route_with_options: Callable[[ArrayT, RouteOptions], RoutingPlan[ArrayT]],
                   where: str) -> RouteFunction[ArrayT]:
    """The public `route` of a front (`where`: its module), written once here: it builds the
    RouteOptions of its arguments and calls the front's `route_with_options(logits, options)`."""

    def route(
        logits: ArrayT,
        k: int,
        *,
        score: str = "softmax",
        normalize: str = "topk",
        scale: float = 1.0,
        bias: Optional[BiasLike] = None,
        num_groups: Optional[int] = None,
        topk_groups: Optional[int] = None,
        capacity: Optional[int] = None,
        capacity_factor: Optional[float] = None,
        min_capacity: int = 0,
        capacity_multiple: int = 1,
        priority: str = "slot",
        pad_to: int = 1,
    ) -> RoutingPlan[ArrayT]:
        """Token-choice routing: each token picks its k best experts; capacity decides which picks fit.

        Args:
            logits: (T, E) float32 / float64 / float16 / bfloat16 router logits (a NumPy array or a
                torch tensor; the plan holds the same kind).
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

        The options can also be built once as a RouteOptions and passed to `route_with_options`.
        See docs/semantics.md for the exact rules (ties, capacity, priorities, normalization).

        Example:
            >>> import numpy as np, moeroute
            >>> logits = np.array([[0.0, 2.0, 1.0], [3.0, 0.0, 0.0]], np.float32)
            >>> plan = moeroute.route(logits, k=1, capacity=1)
            >>> plan.expert_ids.tolist(), plan.src.tolist()
            ([[1], [0]], [1, 0, -1])
        """
        return route_with_options(logits, route_options(
            k, score, normalize, scale, bias, num_groups, topk_groups, capacity, capacity_factor, min_capacity,
            capacity_multiple, priority, pad_to))

    route.__module__ = where
    route.__qualname__ = "route"
    return route
