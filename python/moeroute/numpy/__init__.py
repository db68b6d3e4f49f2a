"""moeroute for NumPy arrays: the routing ops, their backward passes and the auxiliary losses, with
NumPy arrays in and out (float16 / bfloat16 read in place). `moeroute.route` etc. come here for
arrays; this front never imports torch."""

from . import losses
from .losses import importance_loss, load_balancing_loss, noisy_load_loss, noisy_load_probs, z_loss
from .ops import (combine, combine_backward, expert_choice, permute, permute_backward, plan_from_topk, route,
                  route_backward, route_with_options)

__all__ = [
    "route", "route_with_options", "expert_choice", "plan_from_topk", "permute", "combine", "permute_backward", "combine_backward",
    "route_backward", "losses", "load_balancing_loss", "z_loss", "importance_loss", "noisy_load_probs",
    "noisy_load_loss",
]
