"""Type stubs of the Rust extension (moeroute._core). Use the public functions in moeroute instead.

Shapes: T tokens, E experts, S slots (k for token choice, E for expert choice), R permuted rows,
H hidden size. CPU functions take and return NumPy arrays (float16 / bfloat16 data as uint16
views, with its dtype name given as `dtype_name`); the cuda_* functions take device pointers (ints)
of memory the caller allocated, and the CUDA stream to run on.
"""

from typing import Optional, Protocol, Tuple

import numpy as np

__version__: str

# The names of a plan's arrays, in the order route / expert_choice return them and cuda_route /
# cuda_expert_choice take their output pointers.
PLAN_FIELDS: Tuple[str, str, str, str, str, str, str, str]

class PicksOptionsLike(Protocol):
    """plan_from_topk's layout options (also route's), read by attribute name
    (moeroute.options.PicksOptions)."""

    @property
    def capacity(self) -> Optional[int]: ...
    @property
    def capacity_factor(self) -> Optional[float]: ...
    @property
    def min_capacity(self) -> int: ...
    @property
    def capacity_multiple(self) -> int: ...
    @property
    def priority(self) -> str: ...  # "slot" | "token" | "score"
    @property
    def pad_to(self) -> int: ...

class RouteOptionsLike(PicksOptionsLike, Protocol):
    """route's options, read by attribute: the layout options and these (a bias is passed
    separately, never read from here)."""

    @property
    def k(self) -> int: ...
    @property
    def score(self) -> str: ...  # "softmax" | "sigmoid"
    @property
    def normalize(self) -> str: ...  # "none" | "topk" | "kept"
    @property
    def scale(self) -> float: ...
    @property
    def num_groups(self) -> Optional[int]: ...
    @property
    def topk_groups(self) -> Optional[int]: ...

# Threads and the output buffer cache.
def set_num_threads(num_threads: int) -> None: ...
def get_num_threads() -> int: ...
def uses_openmp_team() -> bool: ...
def set_buffer_cache_limit(limit_bytes: int) -> None: ...
def buffer_cache_info() -> Tuple[int, int]: ...  # (bytes cached now, limit in bytes)

class PooledBuffer:
    """The base object of an output array whose memory comes from the buffer cache."""

# A plan as route / expert_choice return it: its arrays in PLAN_FIELDS order (weights [T, S] and
# probs [T, E] float32 / float64, expert_ids [T, S], dest [T, S], src [R] int32, expert_offsets
# [E + 1], tokens_per_expert [E], assigned_per_expert [E] int64), then the capacity or None.
PlanTuple = Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray,
                  np.ndarray, Optional[int]]

# Routing.
def route(logits: np.ndarray, dtype_name: str, options: RouteOptionsLike,
          bias: Optional[np.ndarray] = None) -> PlanTuple: ...  # bias: float64 [E]
def expert_choice(logits: np.ndarray, dtype_name: str, capacity: Optional[int], capacity_factor: float) -> PlanTuple: ...
def route_layout(num_tokens: int, num_experts: int, options: RouteOptionsLike) -> Tuple[Optional[int], int]: ...
def plan_from_topk(expert_ids: np.ndarray, weights: np.ndarray, dtype_name: str, num_experts: int,
                   options: PicksOptionsLike) -> PlanTuple: ...  # expert_ids: int64 [T, k]
def plan_from_topk_layout(num_tokens: int, top_k: int, num_experts: int,
                          options: PicksOptionsLike) -> Tuple[Optional[int], int]: ...  # (capacity, num_rows)
def expert_choice_layout(num_tokens: int, num_experts: int, capacity: Optional[int],
                         capacity_factor: float) -> Tuple[int, int]: ...  # (capacity, num_rows)
def route_backward(
    grad_weights: np.ndarray, grad_probs: Optional[np.ndarray], probs: np.ndarray, expert_ids: np.ndarray,
    dest: np.ndarray, score: str, normalize: str, scale: float,
) -> np.ndarray: ...  # grad_logits [T, E] in probs' dtype (float32 or float64)
def validate_plan(
    expert_ids: np.ndarray, dest: np.ndarray, src: np.ndarray, expert_offsets: np.ndarray,
    tokens_per_expert: np.ndarray, assigned_per_expert: np.ndarray, capacity: Optional[int],
) -> None: ...

# Permute, combine and their backward passes.
def permute(x: np.ndarray, dtype_name: str, src: np.ndarray) -> np.ndarray: ...
def combine(yp: np.ndarray, dtype_name: str, dest: np.ndarray, weights: np.ndarray) -> np.ndarray: ...
def permute_backward(grad_xp: np.ndarray, dtype_name: str, dest: np.ndarray, *more_grad_xp: np.ndarray) -> np.ndarray: ...
def combine_backward(
    grad_y: np.ndarray, yp: np.ndarray, dtype_name: str, dest: np.ndarray, src: np.ndarray, weights: np.ndarray,
) -> Tuple[np.ndarray, np.ndarray]: ...  # (grad_yp, grad_weights)

# Expert parallelism: rows in a grid of blocks (counts [A, B] int64), a-major to b-major.
def regroup(rows: np.ndarray, dtype_name: str, counts: np.ndarray) -> np.ndarray: ...

# Losses.
def noisy_load_probs(clean: np.ndarray, noisy: np.ndarray, noise_std: np.ndarray, k: int) -> np.ndarray: ...

# CUDA (CudaError without a driver).
def cuda_driver_available() -> bool: ...
def cuda_init(device: int) -> None: ...
def cuda_route_workspace(dtype_name: str, num_tokens: int, num_experts: int, k: int,
                         num_groups: Optional[int]) -> int: ...  # bytes
def cuda_expert_choice_workspace(dtype_name: str, num_tokens: int, num_experts: int) -> int: ...  # bytes
def cuda_plan_from_topk_workspace(num_tokens: int, top_k: int, num_experts: int) -> int: ...  # bytes
def cuda_plan_from_topk(
    device: int, stream: int, expert_ids: int, weights: int, dtype_name: str, num_tokens: int, top_k: int,
    num_experts: int, options: PicksOptionsLike, outputs: Tuple[int, int, int, int, int, int, int, int],
    workspace: int, workspace_bytes: int,
) -> None: ...  # expert_ids: int64; probs (outputs[1]) zeroed by the caller
def cuda_route(
    device: int, stream: int, logits_ptr: int, dtype_name: str, num_tokens: int, num_experts: int,
    options: RouteOptionsLike, bias_ptr: Optional[int], outputs: Tuple[int, int, int, int, int, int, int, int],
    workspace: int, workspace_bytes: int,
) -> None: ...
def cuda_expert_choice(
    device: int, stream: int, logits: int, dtype_name: str, num_tokens: int, num_experts: int,
    capacity: Optional[int], capacity_factor: float, outputs: Tuple[int, int, int, int, int, int, int, int],
    workspace: int, workspace_bytes: int,
) -> None: ...
def cuda_regroup_workspace(a_blocks: int, b_blocks: int) -> int: ...  # bytes
def cuda_regroup(device: int, stream: int, dtype_name: str, x: int, rows: int, hidden: int, counts: int, a_blocks: int,
                 b_blocks: int, workspace: int, out: int) -> None: ...
def cuda_permute(device: int, stream: int, dtype_name: str, x: int, tokens: int, hidden: int, src: int, xp: int,
                 rows: int) -> None: ...
def cuda_combine(device: int, stream: int, dtype_name: str, rows: int, num_rows: int, hidden: int, dest: int,
                 slots: int, weights: int, y: int, tokens: int) -> None: ...
def cuda_permute_backward(device: int, stream: int, dtype_name: str, grad_xp: int, num_rows: int, hidden: int,
                          dest: int, slots: int, grad_x: int, tokens: int) -> None: ...
def cuda_combine_backward(
    device: int, stream: int, dtype_name: str, grad_y: int, tokens: int, yp: int, num_rows: int, hidden: int,
    dest: int, src: int, slots: int, weights: int, grad_yp: int, grad_w: int,
) -> None: ...
def cuda_route_backward(
    device: int, stream: int, dtype_name: str, tokens: int, experts: int, slots: int, grad_weights: int,
    grad_probs: Optional[int], probs: int, expert_ids: int, dest: int, score: str, normalize: str, scale: float,
    grad_logits: int,
) -> None: ...  # dtype_name: "float32" or "float64", the dtype of probs and the gradients
