//! The scratch memory of a CUDA route, plan from given picks or expert choice: where each region lies in the caller's workspace.

use super::common::SHARED_LIMIT;
use super::context::cuda_error;
use crate::dtype::DType;
use crate::error::Result;

/// Positions per chunk of the plan kernels (kernels/plan.cu's CHUNK).
pub(super) const CHUNK: usize = 256;
/// Tokens per block of the gating kernel (kernels/gating.cu's TOKENS_PER_BLOCK).
pub(super) const GATE_TOKENS: usize = 32;

/// Byte offsets of the scratch regions of one route or expert choice inside its workspace.
#[derive(Debug, Clone, Copy, Default)]
pub struct Workspace {
    pub row_scratch: Option<usize>,
    pub group_scratch: Option<usize>,
    pub counts: usize,
    pub totals: usize,
    pub seg_start: usize,
    /// Blocks of scan_chunks done (for its last block).
    pub done: usize,
    pub flags: usize,
    pub order: usize,
    /// Transposed scores ([E, T]) of an expert choice.
    pub probs_t: Option<usize>,
    pub bytes: usize,
}

/// What a workspace is for.
#[derive(Debug, Clone, Copy)]
enum Purpose {
    Route { top_k: usize, num_groups: Option<usize> },
    /// A plan from given picks: the plan kernels' regions only (no gating).
    Picks { top_k: usize },
    ExpertChoice,
}

/// Shared memory of the one-thread-per-token gating kernel's score rows, None when they do not
/// fit (they go to the workspace instead).
pub(super) fn gate_shared_bytes(num_experts: usize, dtype: DType) -> Option<usize> {
    let bytes = GATE_TOKENS * (num_experts + 1) * dtype.acc_bytes();
    (bytes <= SHARED_LIMIT).then_some(bytes)
}

/// The workspace of a route of `k` picks per token (with `num_groups` expert groups, if limited).
pub fn route_workspace(dtype: DType, t: usize, e: usize, k: usize, num_groups: Option<usize>) -> Workspace {
    Workspace::new(dtype, t, e, Purpose::Route { top_k: k, num_groups })
}

/// The workspace of a plan from `k` given picks per token.
pub fn picks_workspace(t: usize, e: usize, k: usize) -> Workspace {
    Workspace::new(DType::F32, t, e, Purpose::Picks { top_k: k })
}

/// The workspace of an expert choice.
pub fn expert_choice_workspace(dtype: DType, t: usize, e: usize) -> Workspace {
    Workspace::new(dtype, t, e, Purpose::ExpertChoice)
}

impl Workspace {
    fn new(dtype: DType, t: usize, e: usize, purpose: Purpose) -> Self {
        let mut at = 0usize;
        let mut take = |bytes: usize| {
            let start = at;
            at += bytes.div_ceil(256) * 256;
            start
        };
        let (k, num_groups) = match purpose {
            Purpose::Route { top_k, num_groups } => (top_k, num_groups),
            Purpose::Picks { top_k } => (top_k, None),
            Purpose::ExpertChoice => (0, None),
        };
        let acc = dtype.acc_bytes();
        let picks = t * k;
        let chunks = picks.div_ceil(CHUNK).max(1);
        let gates = !matches!(purpose, Purpose::Picks { .. });
        let row_scratch = (gates && gate_shared_bytes(e, dtype).is_none()).then(|| take(t * e * acc));
        let group_scratch = num_groups.map(|g| take(t * g * acc));
        let counts = take(chunks * e * 4);
        let totals = take(e * 4);
        let seg_start = take(e * 4);
        let done = take(4);
        let flags = take(picks);
        let order = take(picks * 4);
        let probs_t = matches!(purpose, Purpose::ExpertChoice).then(|| take(t * e * acc));
        Workspace { row_scratch, group_scratch, counts, totals, seg_start, done, flags, order, probs_t, bytes: at.max(256) }
    }

    /// Checks that the caller's workspace of `given` bytes holds this one.
    pub(super) fn check(&self, given: usize) -> Result<()> {
        if given < self.bytes {
            return Err(cuda_error(format!("workspace of {given} bytes, expected {}", self.bytes)));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workspace_regions_are_disjoint_and_aligned() {
        let ws = route_workspace(DType::F32, 1000, 512, 16, Some(8));
        let mut starts = [ws.row_scratch.unwrap(), ws.group_scratch.unwrap(), ws.counts, ws.totals, ws.seg_start, ws.done,
                          ws.flags, ws.order];
        starts.sort();
        assert!(starts.windows(2).all(|w| w[0] < w[1]) && starts.iter().all(|s| s % 256 == 0));
        assert!(ws.bytes >= ws.order + 1000 * 16 * 4);
        assert!(ws.probs_t.is_none());
        // 32 rows of 512 float32 scores do not fit shared memory: the gating rows go to the workspace.
        assert!(route_workspace(DType::F32, 10, 64, 2, None).row_scratch.is_none());
        assert!(route_workspace(DType::F32, 0, 4, 2, None).bytes >= 256);
        assert!(ws.check(ws.bytes).is_ok() && ws.check(ws.bytes - 1).is_err());
    }

    #[test]
    fn expert_choice_workspace_holds_the_transposed_scores() {
        let ws = expert_choice_workspace(DType::F64, 100, 8);
        assert!(ws.probs_t.unwrap() >= ws.order && ws.bytes >= ws.probs_t.unwrap() + 100 * 8 * 8);
        assert_eq!(ws.flags, ws.order); // no picks: no flags
    }

    #[test]
    fn picks_workspace_has_no_gating_scratch() {
        let ws = picks_workspace(1000, 512, 8);
        assert!(ws.row_scratch.is_none() && ws.group_scratch.is_none() && ws.probs_t.is_none());
        assert!(ws.bytes >= ws.order + 1000 * 8 * 4);
    }
}
