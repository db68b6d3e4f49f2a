"""Auxiliary router losses: Switch load balancing, ST-MoE z-loss, Shazeer's importance and load
losses, for NumPy plans and arrays (Python floats) and tensor plans and tensors (differentiable 0-d
tensors); moeroute.numpy.losses and moeroute.torch.losses hold each front's own."""

from ._dispatch import importance_loss, load_balancing_loss, noisy_load_loss, noisy_load_probs, z_loss

__all__ = ["load_balancing_loss", "z_loss", "importance_loss", "noisy_load_probs", "noisy_load_loss"]
