"""moeroute for PyTorch: the routing ops, their backward passes and the auxiliary losses on CPU and
CUDA tensors, differentiable through moeroute's backward kernels, as `torch.ops.moeroute.*` custom
ops that torch.compile traces; `MoE` is a drop-in Mixture-of-Experts layer built on them.
`moeroute.route` etc. come here for tensors."""

from . import _custom_ops  # noqa: F401  (registers the moeroute:: custom ops)
from . import losses
from .experts import ModuleExperts, StackedFFN, grouped_matmul
from .losses import importance_loss, load_balancing_loss, noisy_load_loss, noisy_load_probs, z_loss
from .moe import MoE, RoutingStats, aux_loss
from .ops import (combine, combine_backward, expert_choice, permute, permute_backward, permute_shared,
                  plan_as_tensors, plan_from_topk, route, route_backward, route_with_options)

__all__ = [
    "route", "route_with_options", "expert_choice", "plan_from_topk", "permute", "permute_shared", "plan_as_tensors", "combine", "permute_backward",
    "combine_backward", "route_backward", "losses", "load_balancing_loss", "z_loss", "importance_loss",
    "noisy_load_probs", "noisy_load_loss", "MoE", "RoutingStats", "aux_loss", "StackedFFN", "ModuleExperts",
    "grouped_matmul",
]

# torch.load(..., weights_only=True) may rebuild pickled plans and options (they are validated).
from ..options import _rebuild as _rebuild_options  # noqa: E402
from ..plan import _restore_plan  # noqa: E402
import torch.serialization as _serialization  # noqa: E402

_serialization.add_safe_globals([_restore_plan, _rebuild_options])
