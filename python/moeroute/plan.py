"""RoutingPlan: the one data structure of moeroute, built by route / expert_choice or from arrays
(validated), and saved / reloaded as a dict of NumPy arrays; and
PLAN_FIELDS, the one declaration of its arrays (name, dtype kind, shape), from which the fronts
derive their output allocations."""

from __future__ import annotations

from typing import Any, Dict, Generic, Iterable, Mapping, NamedTuple, Optional, Tuple, cast

import numpy as np
from numpy.typing import ArrayLike, NDArray

from . import _core
from .errors import ArgumentError, DTypeError, PlanError, ShapeError
from ._checks import choice, optional_integer, real
from .options import NORMALIZATIONS, PLAN_SCORES
from ._types import ArrayT


class PlanField(NamedTuple):
    """One array of a RoutingPlan: its name, dtype kind and shape in the plan's sizes.

    kind: "float" (float32, or float64 for float64 logits: the accumulation dtype), "int32" or
    "int64". shape: sizes among "T" (tokens), "E" (experts), "E+1", "S" (slots), "R" (rows)."""
    name: str
    kind: str
    shape: Tuple[str, ...]


# The plan's arrays, in the order the core returns them and its CUDA ops take their outputs
# (float arrays first: torch's opcheck sums a custom op's outputs in order into one accumulator).
PLAN_FIELDS = (
    PlanField("weights", "float", ("T", "S")),
    PlanField("probs", "float", ("T", "E")),
    PlanField("expert_ids", "int32", ("T", "S")),
    PlanField("dest", "int32", ("T", "S")),
    PlanField("src", "int32", ("R",)),
    PlanField("expert_offsets", "int64", ("E+1",)),
    PlanField("tokens_per_expert", "int64", ("E",)),
    PlanField("assigned_per_expert", "int64", ("E",)),
)
# Their names, in that order.
FIELD_NAMES = tuple(f.name for f in PLAN_FIELDS)
if tuple(_core.PLAN_FIELDS) != FIELD_NAMES:  # the core declares its order too: they must agree
    raise ImportError(f"moeroute._core returns plan fields {_core.PLAN_FIELDS}, expected {FIELD_NAMES}")


def field_shapes(num_tokens: int, num_experts: int, slots: int, rows: int) -> Tuple[Tuple[int, ...], ...]:
    """The shape of each field in PLAN_FIELDS order, for a plan of these sizes."""
    sizes = {"T": num_tokens, "E": num_experts, "E+1": num_experts + 1, "S": slots, "R": rows}
    return tuple(tuple(sizes[d] for d in f.shape) for f in PLAN_FIELDS)


_NUMPY_KINDS = {"int32": np.dtype(np.int32), "int64": np.dtype(np.int64)}


class RoutingPlan(Generic[ArrayT]):
    """Which expert each (token, slot) goes to, with what weight, and where its row lives.

    Attributes (read-only NumPy arrays; T tokens, E experts, S slots, R permuted rows):
        expert_ids: (T, S) int32, the expert of each pick; -1 where a slot is unused.
        weights: (T, S) float32 (float64 for float64 logits), combine weights; 0 where dropped.
        probs: (T, E) float, the scores after softmax / sigmoid.
        dest: (T, S) int32, the permuted row of each pick; -1 where dropped or unused.
        src: (R,) int32, the token of each permuted row; -1 for padding rows.
        expert_offsets: (E + 1,) int64, expert e owns rows expert_offsets[e]:expert_offsets[e+1].
        tokens_per_expert: (E,) int64, picks kept per expert.
        assigned_per_expert: (E,) int64, picks per expert before capacity.
        capacity: rows per expert in the capacity layout, or None (dropless).
        score, normalize, scale: how the weights were computed (used by route_backward); score is
            "given" for a plan_from_topk plan (weights given by the caller, no logits).

    See docs/semantics.md (section 6) for the plan's invariants and row layout: each expert's kept
    picks fill the start of its segment in ascending token order, padding rows after them.

    Example:
        >>> import numpy as np, moeroute
        >>> plan = moeroute.route(np.array([[2.0, 1.0, 0.0]], np.float32), k=2)
        >>> plan.expert_ids.tolist(), plan.num_rows
        ([[0, 1]], 2)
    """

    __slots__ = FIELD_NAMES + ("capacity", "score", "normalize", "scale")

    # The slots, for type checkers: ArrayT is np.ndarray or torch.Tensor (see ArrayT).
    weights: ArrayT
    probs: ArrayT
    expert_ids: ArrayT
    dest: ArrayT
    src: ArrayT
    expert_offsets: ArrayT
    tokens_per_expert: ArrayT
    assigned_per_expert: ArrayT
    capacity: Optional[int]
    score: str
    normalize: str
    scale: float

    def __init__(
        self: RoutingPlan[NDArray[Any]],
        *,
        expert_ids: ArrayLike,
        weights: ArrayLike,
        probs: ArrayLike,
        dest: ArrayLike,
        src: ArrayLike,
        expert_offsets: ArrayLike,
        tokens_per_expert: ArrayLike,
        assigned_per_expert: ArrayLike,
        capacity: Optional[int] = None,
        score: str = "softmax",
        normalize: str = "topk",
        scale: float = 1.0,
    ) -> None:
        """Builds a plan from arrays, checking that they are consistent (raises PlanError,
        ShapeError or DTypeError otherwise)."""
        arrays = dict(expert_ids=expert_ids, weights=weights, probs=probs, dest=dest, src=src,
                      expert_offsets=expert_offsets, tokens_per_expert=tokens_per_expert,
                      assigned_per_expert=assigned_per_expert)
        converted = {name: _checked_array(name, value) for name, value in arrays.items()}
        _check_float_shapes(converted)
        capacity = optional_integer(capacity, "capacity", 0)
        _core.validate_plan(
            converted["expert_ids"], converted["dest"], converted["src"], converted["expert_offsets"],
            converted["tokens_per_expert"], converted["assigned_per_expert"], capacity,
        )
        for array in converted.values():
            array.flags.writeable = False
        _fill(self, [converted[name] for name in FIELD_NAMES], capacity, choice(score, "score", PLAN_SCORES),
              choice(normalize, "normalize", NORMALIZATIONS), real(scale, "scale"))

    @classmethod
    def _from_core(cls, fields: Tuple[Any, ...], score: str, normalize: str,
                   scale: float) -> RoutingPlan[NDArray[Any]]:
        """Wraps what the core's route / expert_choice return (the arrays in FIELD_NAMES order, then
        the capacity), already consistent, so not re-validated; the arrays are made read-only."""
        arrays: Tuple[NDArray[Any], ...] = fields[:len(PLAN_FIELDS)]
        for array in arrays:
            array.flags.writeable = False
        return RoutingPlan._of(arrays, fields[len(PLAN_FIELDS)], score, normalize, scale)

    @classmethod
    def _of(cls, arrays: Iterable[ArrayT], capacity: Optional[int], score: str, normalize: str,
            scale: float) -> RoutingPlan[ArrayT]:
        """A plan of these fields, in FIELD_NAMES order, as they are (already consistent: not
        re-validated)."""
        plan = object.__new__(cls)
        _fill(plan, arrays, capacity, score, normalize, scale)
        return plan

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"RoutingPlan is immutable: cannot set {name!r}")

    @property
    def num_tokens(self) -> int:
        """T, the number of tokens routed."""
        return int(self.expert_ids.shape[0])

    @property
    def num_experts(self) -> int:
        """E, the number of experts."""
        return int(self.tokens_per_expert.shape[0])

    @property
    def num_slots(self) -> int:
        """S, the slots per token: k for token choice, E for expert choice."""
        return int(self.expert_ids.shape[1])

    @property
    def top_k(self) -> int:
        """The same as num_slots (S): k for token choice, but E for expert choice."""
        return int(self.expert_ids.shape[1])

    @property
    def num_rows(self) -> int:
        """R, the rows of the permuted buffer (including padding rows)."""
        return int(self.src.shape[0])

    @property
    def num_dropped(self) -> int:
        """Picks that did not fit their expert's capacity."""
        return int(((self.expert_ids >= 0) & (self.dest < 0)).sum())

    def __repr__(self) -> str:
        capacity = "dropless" if self.capacity is None else f"capacity={self.capacity}"
        return (
            f"RoutingPlan(num_tokens={self.num_tokens}, num_experts={self.num_experts}, "
            f"num_slots={self.num_slots}, num_rows={self.num_rows}, {capacity}, "
            f"num_dropped={self.num_dropped}, score={self.score!r}, normalize={self.normalize!r}, "
            f"scale={self.scale:g})"
        )

    def _repr_html_(self) -> str:
        """The notebook display: sizes, capacity, drops, options and a bar chart of tokens per expert."""
        from ._html import plan_html
        return plan_html(self)

    def to_dict(self) -> Dict[str, NDArray[Any]]:
        """All fields as NumPy arrays, ready for np.savez (capacity -1 means dropless), with the
        framework ("numpy" or "torch") and device ("cpu", "cuda:0", ...) the plan's arrays are in."""
        d = {name: _numpy(getattr(self, name)) for name in FIELD_NAMES}
        d["capacity"] = np.asarray(-1 if self.capacity is None else self.capacity, dtype=np.int64)
        d["score"] = np.asarray(self.score)
        d["normalize"] = np.asarray(self.normalize)
        d["scale"] = np.asarray(self.scale, dtype=np.float64)
        framework, device = _where(self.src)
        d["framework"] = np.asarray(framework)
        d["device"] = np.asarray(device)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], device: Optional[str] = None) -> RoutingPlan[Any]:
        """Rebuilds (and validates) a plan from `to_dict()` output or an np.load of it, in the
        framework it was saved from (a torch plan comes back as tensors, on its saved device or on
        `device` if given; dicts without a framework give NumPy plans)."""
        missing = [name for name in FIELD_NAMES + ("capacity",) if name not in d]
        if missing:
            raise ShapeError(f"plan dict: missing fields {missing}")
        capacity = int(np.asarray(d["capacity"]))
        plan = cls(
            **{name: np.asarray(d[name]) for name in FIELD_NAMES},
            capacity=None if capacity < 0 else capacity,
            score=str(np.asarray(d.get("score", "softmax"))),
            normalize=str(np.asarray(d.get("normalize", "topk"))),
            scale=float(np.asarray(d.get("scale", 1.0))),
        )
        framework = str(np.asarray(d.get("framework", "numpy")))
        if framework == "numpy" and device is None:
            return plan
        if framework not in ("numpy", "torch"):
            raise PlanError(f"plan dict: framework is {framework!r}, expected 'numpy' or 'torch'")
        from . import _dispatch  # (the one module that knows the torch front)
        return _dispatch.plan_as_tensors(plan, device or str(np.asarray(d.get("device", "cpu"))))

    def save(self, path: Any) -> None:
        """Writes the plan to an .npz file (with its framework and device, see to_dict)."""
        arrays: Dict[str, Any] = self.to_dict()  # (typed Any: numpy's stub reads **kwds as allow_pickle too)
        np.savez(path, **arrays)

    @classmethod
    def load(cls, path: Any, device: Optional[str] = None) -> RoutingPlan[Any]:
        """Reads a plan written by `save` and validates it; a torch plan comes back as tensors, on
        its saved device or on `device`."""
        with np.load(path) as data:
            return cls.from_dict({name: data[name] for name in data.files}, device=device)

    def numpy(self) -> RoutingPlan[NDArray[Any]]:
        """The same plan with NumPy arrays (itself for a NumPy plan; copies of a tensor plan's
        arrays, moved to the host)."""
        if isinstance(self.src, np.ndarray):
            return self
        arrays = [_numpy(getattr(self, name)).copy() for name in FIELD_NAMES]
        for array in arrays:
            array.flags.writeable = False
        return RoutingPlan._of(arrays, self.capacity, self.score, self.normalize, self.scale)

    def __reduce__(self) -> Any:
        """Pickling (also copy.deepcopy and torch.save): the arrays as they are (tensors detached
        from autograd, on their device), validated again when unpickled."""
        arrays = tuple(_detached(getattr(self, name)) for name in FIELD_NAMES)
        return (_restore_plan, (arrays, self.capacity, self.score, self.normalize, self.scale))

    def __copy__(self) -> RoutingPlan[ArrayT]:
        return self  # (immutable: a shallow copy would share every array anyway)


def _restore_plan(arrays: Tuple[Any, ...], capacity: Optional[int], score: str, normalize: str,
                  scale: float) -> RoutingPlan[Any]:
    """A pickled plan, validated; tensors stay tensors on their device."""
    checked = RoutingPlan(**{name: _numpy(a) for name, a in zip(FIELD_NAMES, arrays)}, capacity=capacity,
                          score=score, normalize=normalize, scale=scale)
    if all(isinstance(a, np.ndarray) for a in arrays):
        return checked
    return RoutingPlan._of(arrays, checked.capacity, checked.score, checked.normalize, checked.scale)


def _where(array: Any) -> Tuple[str, str]:
    """(framework, device) of a plan array."""
    if isinstance(array, np.ndarray):
        return "numpy", "cpu"
    return "torch", str(array.device)


def _detached(array: Any) -> Any:
    return array if isinstance(array, np.ndarray) else array.detach()


# Each slot's setter, in FIELD_NAMES order then capacity, score, normalize, scale.
_SETTERS = tuple(getattr(RoutingPlan, name).__set__
                 for name in FIELD_NAMES + ("capacity", "score", "normalize", "scale"))


def _fill(plan: RoutingPlan[Any], arrays: Iterable[Any], capacity: Optional[int], score: str, normalize: str,
          scale: float) -> None:
    """Sets every slot of a new plan (through the slots' setters: the class's __setattr__ refuses,
    the plan being immutable)."""
    for set_field, value in zip(_SETTERS, (*arrays, capacity, score, normalize, float(scale))):
        set_field(plan, value)


def _numpy(array: Any) -> NDArray[Any]:
    """A NumPy copy-free view of a plan field (torch tensors are moved to the CPU first)."""
    if isinstance(array, np.ndarray):
        return array
    return cast("NDArray[Any]", array.detach().cpu().numpy())


def _checked_array(name: str, value: Any) -> NDArray[Any]:
    array = value if isinstance(value, np.ndarray) else np.asarray(value)
    field = _BY_NAME[name]
    wanted = _NUMPY_KINDS.get(field.kind)
    if wanted is not None:
        if array.dtype != wanted:
            raise DTypeError(f"plan.{name}: got dtype {array.dtype}, expected {wanted}")
    elif array.dtype not in (np.float32, np.float64):
        raise DTypeError(f"plan.{name}: got dtype {array.dtype}, expected float32 or float64")
    ndim = len(field.shape)
    if array.ndim != ndim:
        dims = ", ".join(field.shape)
        raise ShapeError(f"plan.{name}: got shape {list(array.shape)}, expected a {ndim}-D array [{dims}]")
    return np.array(array, copy=True, order="C")


_BY_NAME = {f.name: f for f in PLAN_FIELDS}


def _check_float_shapes(arrays: Mapping[str, NDArray[Any]]) -> None:
    t, s = arrays["expert_ids"].shape
    e = arrays["tokens_per_expert"].shape[0]
    if arrays["weights"].shape != (t, s):
        raise ShapeError(f"plan.weights: got shape {list(arrays['weights'].shape)}, expected [{t}, {s}]")
    if arrays["probs"].shape != (t, e):
        raise ShapeError(f"plan.probs: got shape {list(arrays['probs'].shape)}, expected [{t}, {e}]")
    if arrays["weights"].dtype != arrays["probs"].dtype:
        raise DTypeError(
            f"plan.weights: got dtype {arrays['weights'].dtype}, expected the dtype of plan.probs "
            f"({arrays['probs'].dtype})"
        )
    bad = ~np.isfinite(arrays["weights"])
    if bad.any():
        t_bad, s_bad = map(int, np.argwhere(bad)[0])
        raise PlanError(f"plan.weights: non-finite value at token {t_bad}, slot {s_bad}")


def expect_plan(plan: Any, tensors: Optional[bool] = None) -> RoutingPlan[Any]:
    """plan, if it is a RoutingPlan (DTypeError otherwise) — with `tensors` given, one of tensors
    (True) or of NumPy arrays (False), as the data it is used with."""
    if not isinstance(plan, RoutingPlan):
        raise DTypeError(f"plan: got {type(plan).__name__}, expected a moeroute.RoutingPlan")
    if tensors is not None and isinstance(plan.src, np.ndarray) == tensors:
        if tensors:
            raise DTypeError("plan: holds NumPy arrays, but the data are torch tensors (the plan and the data come "
                             "from different frameworks): route the tensors themselves, or convert the plan with "
                             "moeroute.torch.plan_as_tensors(plan, device)")
        raise DTypeError("plan: holds torch tensors, but the data are NumPy arrays (the plan and the data come "
                         "from different frameworks): pass tensors (torch.from_numpy(array)), or convert the plan "
                         "with plan.numpy()")
    return plan


def expect_routed_plan(plan: RoutingPlan[Any]) -> None:
    """ArgumentError for a plan that was not routed from logits (plan_from_topk's): route_backward
    has nothing to differentiate."""
    if plan.score == "given":
        raise ArgumentError("plan: built by plan_from_topk from given weights, not routed from logits, so "
                            "route_backward has no logits to differentiate (with torch tensors, the gradient "
                            "reaches the given weights through autograd)")
