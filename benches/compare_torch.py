"""Benchmark moeroute's PyTorch front against plain PyTorch eager, all in one run (each part is
also a script of its own, with the same options):

(A) compare_torch_ops.py: each op forward + backward on CPU tensors (route, permute, combine)
    against the fastest of a few PyTorch-eager formulations of the same op;
(B) compare_torch_layer.py: a whole MoE layer (router, SwiGLU experts, combine) forward +
    backward at equal weights: moeroute.torch.MoE against (a) the per-expert loop with
    index_add_, (b) the grouped-matmul formulation transformer libraries ship (softmax + topk,
    stable argsort, gather, grouped_mm, scatter back, weighted sum) and (c) the compute floor:
    the two grouped-matmul stages alone;
(C) compare_torch_overhead.py: the per-call overhead of the torch front over the raw Rust kernel
    at a tiny size.
"""

from __future__ import annotations

import sys

import compare_torch_layer
import compare_torch_ops
import compare_torch_overhead
import harness

PARTS = [compare_torch_ops.PART, compare_torch_layer.PART, compare_torch_overhead.PART]

if __name__ == "__main__":
    sys.exit(harness.torch_main(__doc__, PARTS))
