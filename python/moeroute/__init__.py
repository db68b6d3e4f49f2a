"""moeroute: Mixture-of-Experts routing — top-k gating, capacity, expert choice, permute and
combine, with backward passes — on a Rust core with CPU and CUDA kernels, for NumPy arrays and
PyTorch tensors. The functions here take either (moeroute.numpy and moeroute.torch are the two
fronts behind them)."""

from . import losses
from ._core import (__version__, buffer_cache_info, get_num_threads, set_buffer_cache_limit,
                    set_num_threads)
from ._core import cuda_driver_available as cuda_available
from ._checks import get_checks, set_checks
from ._dispatch import (combine, combine_backward, expert_choice, permute, permute_backward, plan_from_topk,
                        route, route_backward, route_with_options)
from .errors import (ArgumentError, CudaError, DeviceError, DTypeError, IndexOverflowError, LogitsError,
                     MoerouteError, PlanError, ShapeError)
from .options import RouteOptions
from .plan import RoutingPlan

__all__ = [
    "route", "route_with_options", "RouteOptions", "expert_choice", "plan_from_topk", "permute", "combine",
    "permute_backward", "combine_backward", "route_backward",
    "RoutingPlan", "losses", "set_num_threads", "get_num_threads", "__version__",
    "set_buffer_cache_limit", "buffer_cache_info", "cuda_available", "set_checks", "get_checks",
    "MoerouteError", "ShapeError", "DTypeError", "DeviceError", "ArgumentError", "LogitsError", "PlanError",
    "IndexOverflowError", "CudaError",
]
