"""moeroute's exceptions: every input error is a ValueError or TypeError subclass naming the argument."""


class MoerouteError(Exception):
    """Base class of every error moeroute raises."""


class ShapeError(MoerouteError, ValueError):
    """An array has the wrong rank or shape, or arrays disagree on a size (e.g. x and plan tokens)."""


class DTypeError(MoerouteError, TypeError):
    """An array has an unsupported dtype, or an argument has the wrong Python type."""


class DeviceError(DTypeError):
    """A tensor is on a device moeroute does not run on (e.g. meta), or not on the device of the
    other arguments."""


class ArgumentError(MoerouteError, ValueError):
    """An option is out of its valid range (k, capacity, capacity_factor, score, priority, ...)."""


class LogitsError(ArgumentError):
    """The logits hold NaN, or a row that is entirely -inf."""


class PlanError(MoerouteError, ValueError):
    """A RoutingPlan's arrays are inconsistent with each other."""


class IndexOverflowError(MoerouteError, ValueError):
    """A size would overflow the int32 row index of the permuted buffer."""


class CudaError(MoerouteError, RuntimeError):
    """A CUDA op could not run: no NVIDIA driver, no such device, or a driver call failed."""


__all__ = [
    "MoerouteError",
    "ShapeError",
    "DTypeError",
    "DeviceError",
    "ArgumentError",
    "LogitsError",
    "PlanError",
    "IndexOverflowError",
    "CudaError",
]
