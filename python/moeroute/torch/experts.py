"""Expert feed-forward networks held as stacked weights [E, ...] and run over the expert segments
of the permuted rows: torch's grouped matmul where the installed torch has it, a per-segment loop
otherwise (in float32 for half-precision experts on a CPU without native half-precision matmuls).
Custom expert modules (any nn.Module, including another MoE) run segment by segment."""

from __future__ import annotations

import functools
import math
from typing import Callable, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ArgumentError

_GROUPED_MM = getattr(F, "grouped_mm", None) or getattr(torch, "_grouped_mm", None)


@functools.lru_cache(maxsize=None)
def _cpu_supports(check: str) -> bool:
    probe = getattr(torch.cpu, check, None)
    return bool(probe()) if probe is not None else False


def matmul_dtype(dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """The dtype expert matmuls run in: float32 for bfloat16 / float16 on a CPU without AMX or
    AVX512-BF16 (AMX-FP16 for float16), where torch's half-precision matmuls run tens of times
    slower than float32 ones (and are no more accurate); `dtype` otherwise."""
    if device.type != "cpu" or dtype not in (torch.bfloat16, torch.float16):
        return dtype
    if dtype == torch.bfloat16:
        native = _cpu_supports("_is_amx_tile_supported") or _cpu_supports("_is_avx512_bf16_supported")
    else:
        native = _cpu_supports("_is_amx_fp16_supported")
    return dtype if native else torch.float32


def grouped_matmul(rows: torch.Tensor, weights: torch.Tensor, expert_offsets: torch.Tensor) -> torch.Tensor:
    """out[r] = rows[r] @ weights[e] for the rows r of expert e's segment (rows past the last
    segment, i.e. padding, come out as zeros). rows: (R, K), weights: (E, K, N)."""
    ends = expert_offsets[1:]
    if _GROUPED_MM is not None and rows.dtype == weights.dtype:
        try:
            out = _GROUPED_MM(rows, weights, offs=ends.to(torch.int32))
            if out.requires_grad:
                out.register_hook(_dense_gradient)
            return _zero_tail(out, expert_offsets)
        except (RuntimeError, NotImplementedError):
            pass  # e.g. strides this build's kernel does not take: use the loop below
    return segment_loop(rows, expert_offsets, lambda e, seg: seg @ weights[e], weights.shape[-1])


def _dense_gradient(grad: torch.Tensor) -> torch.Tensor:
    """grouped_mm's backward rejects stride-0 gradients (e.g. from .sum()), empty ones included,
    which .contiguous() leaves as they are (an empty tensor counts as contiguous)."""
    return grad.contiguous() if grad.numel() else grad.new_zeros(grad.shape)


def _zero_tail(out: torch.Tensor, expert_offsets: torch.Tensor) -> torch.Tensor:
    if torch.compiler.is_compiling():  # no data-dependent branch in a traced graph: a row mask
        kept = torch.arange(out.shape[0], device=out.device) < expert_offsets[-1]
        return torch.where(kept.unsqueeze(1), out, out.new_zeros(()))
    used = int(expert_offsets[-1])
    if used == out.shape[0]:
        return out
    return torch.cat([out[:used], out.new_zeros((out.shape[0] - used, out.shape[1]))])


def segment_loop(rows: torch.Tensor, expert_offsets: torch.Tensor, fn: Callable[[int, torch.Tensor], torch.Tensor],
                 out_features: int) -> torch.Tensor:
    """Runs fn(e, rows of segment e) for each expert and stacks the results in row order."""
    bounds = expert_offsets.tolist()
    pieces: List[torch.Tensor] = []
    for e in range(len(bounds) - 1):
        lo, hi = bounds[e], bounds[e + 1]
        if hi > lo:
            pieces.append(fn(e, rows[lo:hi]))
    tail = rows.shape[0] - bounds[-1]
    if tail:
        pieces.append(rows.new_zeros((tail, out_features)))
    if not pieces:
        return rows.new_zeros((rows.shape[0], out_features))
    return torch.cat(pieces)


class StackedFFN(nn.Module):
    """E feed-forward experts with stacked weights: SwiGLU (w_gate, w_up, w_down) or GELU
    (w_in, w_out), with no biases (as Mixtral / DeepSeek experts).

    Args:
        num_experts: E.
        hidden_size: H, the model width.
        ffn_size: F, each expert's inner width.
        activation: "swiglu" or "gelu".
    """

    def __init__(self, num_experts: int, hidden_size: int, ffn_size: int, activation: str = "swiglu",
                 dtype: Optional[torch.dtype] = None) -> None:
        super().__init__()
        if activation not in ("swiglu", "gelu"):
            raise ArgumentError(f"activation: got {activation!r}, expected 'swiglu' or 'gelu'")
        self.activation = activation
        self.num_experts, self.hidden_size, self.ffn_size = num_experts, hidden_size, ffn_size
        def param(*shape: int, fan_in: int) -> nn.Parameter:
            bound = 1.0 / math.sqrt(fan_in)
            return nn.Parameter(torch.empty(*shape, dtype=dtype).uniform_(-bound, bound))
        if activation == "swiglu":
            self.w_gate = param(num_experts, hidden_size, ffn_size, fan_in=hidden_size)
        self.w_up = param(num_experts, hidden_size, ffn_size, fan_in=hidden_size)
        self.w_down = param(num_experts, ffn_size, hidden_size, fan_in=ffn_size)

    def row_uses(self, dtype: torch.dtype, device: torch.device) -> int:
        """How many matmuls read the permuted rows directly (gate and up: 2 for SwiGLU in a
        native matmul dtype): MoE hands `forward` one tensor per use (see up_rows)."""
        return 2 if self.activation == "swiglu" and matmul_dtype(dtype, device) == dtype else 1

    def forward(self, xp: torch.Tensor, expert_offsets: torch.Tensor,
                up_rows: Optional[torch.Tensor] = None) -> torch.Tensor:
        """yp from the permuted rows xp. up_rows: the same values as xp in a tensor of its own, for
        the up projection (MoE passes a view of xp here, whose gradient its permute backward sums
        with xp's while gathering)."""
        compute = matmul_dtype(xp.dtype, xp.device)  # (.to of the same dtype copies nothing)
        rows = xp.to(compute)
        up_in = up_rows if up_rows is not None and compute == xp.dtype else rows
        up = grouped_matmul(up_in, self.w_up.to(compute), expert_offsets)
        if self.activation == "swiglu":
            hidden = F.silu(grouped_matmul(rows, self.w_gate.to(compute), expert_offsets)) * up
        else:
            hidden = F.gelu(up)
        return grouped_matmul(hidden, self.w_down.to(compute), expert_offsets).to(xp.dtype)

    def expert(self, e: int, rows: torch.Tensor) -> torch.Tensor:
        """Expert e alone on some rows (the plain reference of what forward computes)."""
        up = rows @ self.w_up[e]
        hidden = F.silu(rows @ self.w_gate[e]) * up if self.activation == "swiglu" else F.gelu(up)
        out: torch.Tensor = hidden @ self.w_down[e]
        return out


class ModuleExperts(nn.Module):
    """Experts given as a list of modules mapping (n, H) -> (n, H); each runs on its own segment."""

    def __init__(self, experts: Sequence[nn.Module]) -> None:
        super().__init__()
        self.experts = nn.ModuleList(experts)

    def forward(self, xp: torch.Tensor, expert_offsets: torch.Tensor) -> torch.Tensor:
        return segment_loop(xp, expert_offsets, lambda e, seg: self.experts[e](seg), xp.shape[1])

    def expert(self, e: int, rows: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.experts[e](rows)
        return out
