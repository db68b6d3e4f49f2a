"""Checked mode of the CUDA ops (moeroute.set_checks(True) or MOEROUTE_CHECKS=1): the input checks
the CPU core makes — NaN logits, rows of all -inf, a non-finite bias, plan indices out of range, a
dest / src pair that is not one-to-one — computed on the device with torch reductions and read
back with one host synchronisation per op, raising the CPU path's error and message. Off by
default: the read-back stalls the stream and cannot be captured in a CUDA graph. The functions
are device-agnostic, so they are tested against the CPU core on CPU tensors too."""

from __future__ import annotations

import math
from typing import List, Optional

import torch

from ..errors import ArgumentError, LogitsError, PlanError

Tensor = torch.Tensor


def _first(mask: Tensor) -> Tensor:
    """The flat index of mask's first True, or -1 (a 0-d int64 tensor on mask's device)."""
    flat = mask.reshape(-1)
    if flat.numel() == 0:
        return torch.full((), -1, dtype=torch.int64, device=mask.device)
    return torch.where(flat.any(), flat.to(torch.int8).argmax(), -1)


def _read(*values: Tensor) -> List[int]:
    """The values on the host: the op's one synchronisation."""
    return torch.stack([v.to(torch.int64) for v in values]).tolist()


def logits(x: Tensor) -> None:
    """LogitsError for the first token whose logits hold NaN or are all -inf."""
    t, e = x.shape
    if t == 0 or e == 0:
        return
    nan_token = _first(torch.isnan(x).any(dim=1))
    dead_token = _first((x == float("-inf")).all(dim=1))
    nan_at, dead_at = _read(nan_token, dead_token)
    if nan_at >= 0 and (dead_at < 0 or nan_at < dead_at):
        raise LogitsError(f"logits: NaN value at token {nan_at}")
    if dead_at >= 0:
        raise LogitsError(f"logits: row of all -inf (no expert can be scored) at token {dead_at}")


def bias(values: Optional[Tensor]) -> None:
    """ArgumentError for the first non-finite bias value."""
    if values is None or values.numel() == 0:
        return
    bad = _first(~torch.isfinite(values))
    (at,) = _read(bad)
    if at >= 0:
        value = float(values[at])
        shown = "NaN" if math.isnan(value) else str(value)  # (as the core writes it)
        raise ArgumentError(f"bias: got {shown} at expert {at}, expected finite values")


def _slot_indices(values: Tensor, limit: int, arg: str, what: str) -> None:
    slots = max(values.shape[1], 1) if values.dim() == 2 else 1
    bad = _first((values < -1) | (values >= limit))
    (at,) = _read(bad)
    if at >= 0:
        value = int(values.reshape(-1)[at])
        raise PlanError(f"{arg}: is {value} at token {at // slots}, slot {at % slots}; "
                        f"expected -1 or {what} in [0, {limit})")


def dest(values: Tensor, num_rows: int) -> None:
    _slot_indices(values, num_rows, "plan.dest", "a row")


def expert_ids(values: Tensor, num_experts: int) -> None:
    _slot_indices(values, num_experts, "plan.expert_ids", "an expert")


def src(values: Tensor, num_tokens: int) -> None:
    bad = _first((values < -1) | (values >= num_tokens))
    (at,) = _read(bad)
    if at >= 0:
        raise PlanError(f"plan.src: is {int(values[at])} at row {at}; expected -1 or a token index in [0, {num_tokens})")


def one_to_one(dest_values: Tensor, src_values: Tensor) -> None:
    """dest and src (each already in range) map kept (token, slot) pairs and non-padding rows one
    to one: src[dest[t, s]] == t, no row twice, and every non-padding row kept by its token."""
    t, s = dest_values.shape
    rows = src_values.shape[0]
    device = dest_values.device
    flat = dest_values.reshape(-1).to(torch.int64)
    kept = flat >= 0
    position = torch.arange(flat.numel(), device=device)
    token = position // max(s, 1)
    row = flat.clamp(min=0)
    owner = src_values.to(torch.int64)[row] if rows else torch.full_like(flat, -1)
    mismatch = kept & (owner != token)
    # Each row's first referencing position: a later one with the same row is a duplicate.
    first_at = torch.full((max(rows, 1),), flat.numel(), dtype=torch.int64, device=device)
    first_at = first_at.scatter_reduce(0, row[kept], position[kept], reduce="amin")
    duplicate = kept & (position != first_at[row])
    counts = torch.bincount(row[kept], minlength=rows)[:rows]
    orphan = (src_values >= 0) & (counts == 0)
    bad_at, orphan_at = _read(_first(mismatch | duplicate), _first(orphan))
    if bad_at >= 0:
        d, tok, slot = int(flat[bad_at]), bad_at // s, bad_at % s
        if bool(mismatch[bad_at]):
            raise PlanError(f"plan.dest: is {d} at token {tok}, slot {slot}, but plan.src gives row {d} "
                            f"to token {int(src_values[d])}")
        raise PlanError(f"plan.dest: has row {d} twice at token {tok} (slots {int(first_at[d]) % s} and {slot})")
    if orphan_at >= 0:
        owner_token = int(src_values[orphan_at])
        raise PlanError(f"plan.src: row {orphan_at} names token {owner_token}, but no slot of token {owner_token} "
                        f"has that row in plan.dest")
