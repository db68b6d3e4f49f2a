"""moeroute.torch.MoE: a drop-in Mixture-of-Experts layer (router + experts + combine) built on
moeroute's routing ops, with noisy top-k gating, input jitter, an auxiliary-loss-free selection
bias and the auxiliary losses, and per-forward routing statistics."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import check_top_k, choice, integer, optional_integer, real
from ..errors import ArgumentError, DTypeError, ShapeError
from ..options import RouteOptions
from ..plan import RoutingPlan
from .. import _core
from . import _custom_ops
from . import losses as _losses
from .experts import ModuleExperts, StackedFFN, matmul_dtype
from ._gate import gate_and_rows
from .ops import expert_choice, route_with_options

if TYPE_CHECKING:
    from .distributed._layer import ExpertParallel


@dataclass
class RoutingStats:
    """What the last forward pass did: kept picks per expert, picks before capacity, drops."""
    tokens_per_expert: torch.Tensor
    assigned_per_expert: torch.Tensor
    num_dropped: int
    capacity: Optional[int] = None  # rows per expert of that forward's plan (None: dropless)

    def _repr_html_(self) -> str:
        from .._html import stats_html
        return stats_html(self)


class MoE(nn.Module):
    """A Mixture-of-Experts feed-forward layer for a transformer block, in place of its MLP.

    Args:
        hidden_size: H, the width of the tokens.
        num_experts: E.
        top_k: experts per token (token-choice routing).
        ffn_size: each default expert's inner width (default 4 * H for GELU, 8/3 * H for SwiGLU).
        activation: "swiglu" or "gelu" for the default stacked experts.
        experts: your own list of E modules mapping (n, H) -> (n, H), instead of the defaults
            (another MoE works too: hierarchical MoE).
        routing: "token" (top-k per token) or "expert" (expert choice, Zhou et al. 2022).
        score, normalize, scale, num_groups, topk_groups, capacity, capacity_factor, min_capacity,
            capacity_multiple, priority, pad_to: as in moeroute.route (capacity_factor / capacity
            also size expert choice).
        noisy_gating: Shazeer's noisy top-k: a learned noise projection, noise only in training.
        jitter: Switch-style multiplicative input jitter for the router, U(1 - jitter, 1 + jitter).
        bias_update_rate: > 0 turns on DeepSeek-V3's auxiliary-loss-free balancing: a selection
            bias per expert, updated after each training forward by rate * sign(mean load - load).
        load_balancing_coef, z_loss_coef, importance_coef, noisy_load_coef: weights of the
            auxiliary losses summed into `aux_loss` after each forward.
        expert_parallel_group: a torch.distributed process group (torch.distributed.group.WORLD for
            the default one): build the layer expert-parallel, holding only this rank's num_experts / W
            experts (`experts` may then list all E modules or only this rank's); see
            moeroute.torch.distributed (shard_moe, load_full_state_dict) and
            docs/expert-parallel.md.
        same_num_tokens, global_stats: expert-parallel options (see shard_moe).

    Call it on a (..., hidden_size) tensor of the layer's dtype and device; it returns the same
    shape (see `forward`). After each forward: `aux_loss` (0-d tensor to add to the training
    loss), `losses` (each term, unweighted) and `stats` (RoutingStats). See docs/semantics.md.

    Example:
        >>> import torch
        >>> from moeroute.torch import MoE
        >>> layer = MoE(hidden_size=16, num_experts=4, top_k=2, ffn_size=32)
        >>> layer(torch.randn(2, 5, 16)).shape
        torch.Size([2, 5, 16])
    """

    expert_bias: torch.Tensor  # (a buffer, registered in __init__)

    if TYPE_CHECKING:  # (nn.Module types a call as returning Any: a layer's call is its forward)
        def __call__(self, x: torch.Tensor) -> torch.Tensor: ...

    def __init__(
        self,
        hidden_size: int,
        num_experts: int,
        top_k: int = 2,
        *,
        ffn_size: Optional[int] = None,
        activation: str = "swiglu",
        experts: Optional[Sequence[nn.Module]] = None,
        routing: str = "token",
        score: str = "softmax",
        normalize: str = "topk",
        scale: float = 1.0,
        num_groups: Optional[int] = None,
        topk_groups: Optional[int] = None,
        capacity: Optional[int] = None,
        capacity_factor: Optional[float] = None,
        min_capacity: int = 0,
        capacity_multiple: int = 1,
        priority: str = "slot",
        pad_to: int = 1,
        noisy_gating: bool = False,
        jitter: float = 0.0,
        bias_update_rate: float = 0.0,
        load_balancing_coef: float = 0.0,
        z_loss_coef: float = 0.0,
        importance_coef: float = 0.0,
        noisy_load_coef: float = 0.0,
        expert_parallel_group: Any = None,
        same_num_tokens: bool = False,
        global_stats: bool = False,
    ) -> None:
        """Builds the layer: a bias-free router nn.Linear(hidden_size, num_experts), the experts
        (default: StackedFFN with `activation`) and the routing options, checked here (ArgumentError
        for an out-of-range option). Every argument is described in the class docstring
        (help(MoE)); the routing options mean what they mean in moeroute.route."""
        super().__init__()
        hidden_size = integer(hidden_size, "hidden_size", 1)
        num_experts = integer(num_experts, "num_experts", 1)
        top_k = integer(top_k, "top_k")
        if routing not in ("token", "expert"):
            raise ArgumentError(f"routing: got {routing!r}, expected 'token' or 'expert'")
        if routing == "token":
            check_top_k(top_k, num_experts, "top_k")
        self.expert_parallel: Optional[ExpertParallel] = None
        if expert_parallel_group is not None:
            from .distributed._layer import ExpertParallel as _EP
            self.expert_parallel = _EP(expert_parallel_group, num_experts, same_num_tokens, global_stats)
        elif same_num_tokens or global_stats:
            raise ArgumentError("same_num_tokens, global_stats: given without expert_parallel_group, expected "
                                "them only for an expert-parallel layer")
        local = num_experts if self.expert_parallel is None else self.expert_parallel.num_local_experts
        if experts is not None and len(experts) not in (num_experts, local):
            expected = f"num_experts = {num_experts}" + (f" or this rank's {local}" if local != num_experts else "")
            raise ArgumentError(f"experts: got {len(experts)} modules, expected {expected}")
        ffn_size = optional_integer(ffn_size, "ffn_size", 1)
        if experts is None:
            choice(activation, "activation", ("swiglu", "gelu"))
        jitter = real(jitter, "jitter")
        if not 0.0 <= jitter < 1.0:
            raise ArgumentError(f"jitter: got {jitter}, expected a number in [0, 1)")
        bias_update_rate = _non_negative(bias_update_rate, "bias_update_rate")
        load_balancing_coef, z_loss_coef, importance_coef, noisy_load_coef = (
            _non_negative(v, n) for v, n in ((load_balancing_coef, "load_balancing_coef"), (z_loss_coef, "z_loss_coef"),
                                             (importance_coef, "importance_coef"), (noisy_load_coef, "noisy_load_coef")))
        self.hidden_size, self.num_experts, self.top_k, self.routing = hidden_size, num_experts, top_k, routing
        self.route_options = RouteOptions(top_k, score=score, normalize=normalize, scale=scale,
                                          num_groups=num_groups, topk_groups=topk_groups, capacity=capacity,
                                          capacity_factor=capacity_factor, min_capacity=min_capacity,
                                          capacity_multiple=capacity_multiple, priority=priority, pad_to=pad_to)
        self.router = nn.Linear(hidden_size, num_experts, bias=False)
        self.noise = nn.Linear(hidden_size, num_experts, bias=False) if noisy_gating else None
        if self.noise is not None:
            nn.init.zeros_(self.noise.weight)
        self.jitter = jitter
        self.bias_update_rate = bias_update_rate
        self.register_buffer("expert_bias", torch.zeros(num_experts), persistent=True)
        if experts is None:
            default_ffn = (8 * hidden_size + 2) // 3 if activation == "swiglu" else 4 * hidden_size
            self.experts: nn.Module = StackedFFN(local, hidden_size, ffn_size or default_ffn, activation)
        elif self.expert_parallel is None:
            self.experts = ModuleExperts(experts)
        else:
            from .distributed._shard import LocalModuleExperts
            first = self.expert_parallel.first_expert
            mine = experts[first:first + local] if len(experts) == num_experts else experts
            self.experts = LocalModuleExperts(list(mine), first)
        self.coefficients = dict(load_balancing=load_balancing_coef, z_loss=z_loss_coef,
                                 importance=importance_coef, noisy_load=noisy_load_coef)
        self.aux_loss: torch.Tensor = torch.zeros(())
        self.losses: Dict[str, torch.Tensor] = {}
        self.stats: Optional[RoutingStats] = None

    def gate_logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """The router's linear gate. Half-precision layers on a CPU without native half-precision
        matmuls compute it in float32 (routing wants float32 logits anyway, and there torch's
        bfloat16 matmuls are tens of times slower)."""
        compute = matmul_dtype(tokens.dtype, tokens.device)
        if compute == tokens.dtype:
            logits: torch.Tensor = self.router(tokens)
            return logits
        return F.linear(tokens.to(compute), self.router.weight.to(compute))

    def router_logits(
            self, tokens: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor], torch.Tensor]:
        """(logits used for routing, clean logits, noise std or None, the tokens for permute)."""
        router_in = tokens
        if self.training and self.jitter > 0:
            router_in = tokens * torch.empty_like(tokens).uniform_(1.0 - self.jitter, 1.0 + self.jitter)
        if router_in is tokens and self._router_is_plain_linear(tokens):
            # One autograd node for the gate and permute's input (see _gate.gate_and_rows).
            clean, rows = gate_and_rows(tokens, self.router.weight)
        else:
            clean, rows = self.gate_logits(router_in), tokens
        if self.noise is None or not self.training:
            return clean, clean, None, rows
        noise_std = F.softplus(self.noise(router_in)) + 1e-2
        return clean + torch.randn_like(clean) * noise_std, clean, noise_std, rows

    def _router_is_plain_linear(self, tokens: torch.Tensor) -> bool:
        """Whether the gate is exactly F.linear(tokens, router.weight): a bias-free nn.Linear
        without hooks, in the tokens' own matmul dtype."""
        router = self.router
        return (type(router) is nn.Linear and router.bias is None and not router._forward_hooks
                and not router._forward_pre_hooks
                and matmul_dtype(tokens.dtype, tokens.device) == tokens.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Routes the tokens of x to their experts and returns the combined outputs.

        Args:
            x: (..., hidden_size) tokens, any leading shape (e.g. (batch, sequence, hidden_size));
                its N = x.numel() // hidden_size rows are routed as N tokens. Must have the
                layer's dtype and be on the layer's device (DTypeError otherwise; ShapeError for
                a last dimension other than hidden_size).

        Returns:
            A tensor of x's shape, dtype and device: each token's weighted sum of its experts'
            outputs (moeroute.combine with the plan's weights); zeros for a token whose picks were
            all dropped by capacity, so keep a residual connection around the layer.

        Routing: logits = router(x) (routed in float32 for half-precision layers), then
        moeroute.route with the layer's options (routing="token", with `expert_bias` as
        selection-only bias when bias_update_rate > 0) or moeroute.expert_choice
        (routing="expert").

        Sets, after each call:
            aux_loss: 0-d tensor, the sum of coef * loss over the losses with a non-zero
                coefficient; add it to the training loss.
            losses: dict of those losses, unweighted ("load_balancing", "z_loss" on the clean
                logits, "importance", "noisy_load").
            stats: RoutingStats (tokens_per_expert, assigned_per_expert, num_dropped).

        In training mode only (module.train()): `jitter` multiplies the router's input (not the
        experts') by uniform noise in [1 - jitter, 1 + jitter]; noisy_gating adds
        randn * (softplus(noise(x)) + 1e-2) to the logits (and only then is "noisy_load"
        computed); bias_update_rate > 0 updates `expert_bias` after the forward by
        rate * sign(mean load - load), load being the picks per expert before capacity. In eval
        mode the layer is deterministic (the bias still steers selection, without updates).

        See docs/semantics.md (section 13) for the details and the routing ops' exact rules.
        """
        if self.expert_parallel is not None:
            return self.expert_parallel.forward(self, x)
        self._check_input(x)
        shape = x.shape
        tokens = x.reshape(-1, self.hidden_size)
        self._check_rows(tokens.shape[0])
        logits, clean, noise_std, rows = self.router_logits(tokens)
        plan = self.plan(logits)
        row_uses = getattr(self.experts, "row_uses", None)
        uses = row_uses(tokens.dtype, tokens.device) if row_uses is not None else 1
        xp, *more_uses = _custom_ops.permute_shared(rows, plan.src, plan.dest, uses)
        yp = self.experts(xp, plan.expert_offsets, *more_uses)
        y: torch.Tensor = _custom_ops.combine(yp, plan.dest, plan.src, plan.weights)
        self._record(plan, clean, logits, noise_std)
        return y.reshape(shape)

    def _check_input(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor):
            raise DTypeError(f"x: got {type(x).__name__}, expected a tensor of shape (..., {self.hidden_size})")
        if x.dim() == 0 or x.shape[-1] != self.hidden_size:
            raise ShapeError(f"x: got shape {list(x.shape)}, expected (..., {self.hidden_size}) (hidden_size)")
        weight = self.router.weight
        if x.dtype != weight.dtype:
            raise DTypeError(f"x: got dtype {x.dtype}, expected the layer's dtype ({weight.dtype})")
        if x.device != weight.device:
            raise DTypeError(f"x: got a tensor on {x.device}, expected the layer's device ({weight.device})")

    def _check_rows(self, num_tokens: int) -> None:
        """Raises IndexOverflowError before any work when the plan of this many tokens could not be
        indexed with int32 rows (the core's layout rule; checked at trace time under torch.compile)."""
        if torch.compiler.is_compiling():
            return
        o = self.route_options
        if self.routing == "expert":
            _core.expert_choice_layout(num_tokens, self.num_experts, o.capacity, o.capacity_factor or 1.0)
        else:
            _core.route_layout(num_tokens, self.num_experts, o)

    def __getstate__(self) -> Dict[str, object]:
        """For copy.deepcopy and pickle: the last forward's losses without their autograd history
        (tensors inside a graph cannot be deep-copied)."""
        state = self.__dict__.copy()
        state["aux_loss"] = self.aux_loss.detach()
        state["losses"] = {name: value.detach() for name, value in self.losses.items()}
        return state

    def plan(self, logits: torch.Tensor) -> RoutingPlan[torch.Tensor]:
        """The RoutingPlan of these router logits (float32 routing for half-precision logits)."""
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()
        o = self.route_options
        if self.routing == "expert":
            return expert_choice(logits, capacity=o.capacity, capacity_factor=o.capacity_factor or 1.0)
        if self.bias_update_rate > 0:
            o = o.with_bias(self.expert_bias)
        return route_with_options(logits, o)

    def _record(self, plan: RoutingPlan[torch.Tensor], clean: torch.Tensor, logits: torch.Tensor,
                noise_std: Optional[torch.Tensor], load: Optional[torch.Tensor] = None,
                stats: Optional[RoutingStats] = None) -> None:
        """Sets aux_loss, losses and stats, and updates the bias in training. `load` (picks per
        expert for the bias update) and `stats` replace the plan's own (expert parallelism gives
        the group's)."""
        terms: Dict[str, torch.Tensor] = {}
        c = self.coefficients
        if c["load_balancing"]:
            terms["load_balancing"] = _losses.load_balancing_loss(plan)
        if c["z_loss"]:
            terms["z_loss"] = _losses.z_loss(clean)
        if c["importance"]:
            terms["importance"] = _losses.importance_loss(plan)
        if c["noisy_load"] and noise_std is not None:
            terms["noisy_load"] = _losses.noisy_load_loss(clean, noise_std, logits.detach(), self.top_k)
        self.losses = terms
        self.aux_loss = sum((c[name] * value for name, value in terms.items()), clean.new_zeros(()))
        self.stats = stats if stats is not None else RoutingStats(plan.tokens_per_expert.detach(), plan.assigned_per_expert.detach(),
                                           plan.num_dropped, plan.capacity)
        if self.training and self.bias_update_rate > 0:
            with torch.no_grad():
                picks = (plan.assigned_per_expert if load is None else load).to(self.expert_bias.dtype)
                self.expert_bias += self.bias_update_rate * torch.sign(picks.mean() - picks)


def aux_loss(model: nn.Module) -> torch.Tensor:
    """The sum of `aux_loss` over every MoE layer in `model` (nested ones included)."""
    total = torch.zeros(())
    for module in model.modules():
        if isinstance(module, MoE):
            total = total + module.aux_loss
    return total


def _non_negative(value: object, name: str) -> float:
    number = real(value, name)
    if not (math.isfinite(number) and number >= 0):
        raise ArgumentError(f"{name}: got {number}, expected a finite number >= 0")
    return number
