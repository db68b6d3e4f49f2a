"""Expert parallelism over torch.distributed: an MoE layer's experts spread over the ranks of a
process group, each rank routing its own tokens and exchanging rows with all_to_all_single.

shard_moe(layer, group) gives a rank its copy of a full layer; MoE(..., expert_parallel_group=g)
builds one sharded directly. dispatch / combine are the exchange for layers of your own;
regroup the kernel that orders received rows by local expert. See docs/expert-parallel.md."""

from ._collectives import CollectiveError
from ._exchange import DispatchHandle, combine, dispatch, exchange_layout
from ._layer import ExpertParallel
from ._regroup import regroup
from ._shard import (LocalModuleExperts, gather_full_state_dict, load_full_state_dict, parameter_groups,
                     shard_moe)

__all__ = [
    "shard_moe", "dispatch", "combine", "DispatchHandle", "exchange_layout", "regroup", "ExpertParallel",
    "LocalModuleExperts", "gather_full_state_dict", "load_full_state_dict", "parameter_groups", "CollectiveError",
]
