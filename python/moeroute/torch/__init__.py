"""moeroute for PyTorch: `moeroute.route`, `permute`, `combine`, ... accept CPU tensors and return
tensors, differentiable through moeroute's backward kernels, as `torch.ops.moeroute.*` custom ops
that torch.compile traces; `MoE` is a drop-in Mixture-of-Experts layer built on them."""

from . import _ops  # registers the moeroute:: custom ops
from .experts import ModuleExperts, StackedFFN, grouped_matmul
from .moe import MoE, RoutingStats, aux_loss

__all__ = ["MoE", "RoutingStats", "aux_loss", "StackedFFN", "ModuleExperts", "grouped_matmul"]
