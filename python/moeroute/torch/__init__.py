"""moeroute for PyTorch: `moeroute.route`, `permute`, `combine`, ... accept CPU tensors and return
tensors, differentiable through moeroute's backward kernels, as `torch.ops.moeroute.*` custom ops
that torch.compile traces."""

from . import _ops  # registers the moeroute:: custom ops

__all__ = ["_ops"]
