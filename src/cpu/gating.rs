//! Token-choice gating: scores, selection bias, group limiting and top-k for every token, in parallel.

use std::mem::MaybeUninit;

use crate::threads::{map_tasks, DisjointChunks};

use crate::cpu::scores::{check_rows, score_row, RowsOutcome, ScoreMath};
use crate::cpu::select::{mask_groups, top_k};
use crate::cpu::simd::{dispatch, Body};
use crate::dtype::{Accum, Activation};
use crate::error::Result;
use crate::routing::{GroupLimit, ScoreFunction};

/// Tokens per parallel task; fixed so results do not depend on the thread count.
const TOKENS_PER_TASK: usize = 256;

/// What gating needs to know besides the logits.
pub struct GateSpec<'a, F> {
    pub top_k: usize,
    pub score: ScoreFunction,
    pub bias: Option<&'a [F]>,
    pub groups: Option<GroupLimit>,
}

/// Per-token picks: `expert_ids[t*k + s]` in descending selection order, `picked_scores` their
/// unbiased scores, `probs[t*E + e]` every score.
pub struct Gate<F> {
    pub expert_ids: Vec<i32>,
    pub picked_scores: Vec<F>,
    pub probs: Vec<F>,
}

/// One task's tokens: their logits and the output slices to fill.
struct Rows<'a, L: Activation> {
    logits: &'a [L],
    first_token: usize,
    probs: &'a mut [MaybeUninit<L::Acc>],
    ids: &'a mut [i32],
    picked: &'a mut [L::Acc],
}

/// One task of gating: its rows, the spec and the number of experts.
struct GateTask<'a, L: Activation> {
    rows: Rows<'a, L>,
    spec: &'a GateSpec<'a, L::Acc>,
    e_count: usize,
}

impl<L: Activation> Body for GateTask<'_, L>
where
    L::Acc: ScoreMath,
{
    type Output = RowsOutcome;
    /// Scores, masks and selects for each token of one task.
    #[inline(always)]
    fn run(self) -> RowsOutcome {
        gate_rows(self.rows, self.spec, self.e_count)
    }
}

#[inline(always)]
fn gate_rows<L: Activation>(rows: Rows<L>, spec: &GateSpec<L::Acc>, e_count: usize) -> RowsOutcome
where
    L::Acc: ScoreMath,
{
    let k = spec.top_k;
    let per_group = spec.groups.map(|g| (k / g.topk_groups).max(1)).unwrap_or(0);
    let mut selection = Vec::with_capacity(e_count);
    let mut p_row = vec![<L::Acc as Accum>::ZERO; e_count];
    let (mut scratch, mut order, mut group_scores) = (Vec::new(), Vec::new(), Vec::new());
    for (i, ((p_out, id_row), pick_row)) in
        rows.probs.chunks_mut(e_count).zip(rows.ids.chunks_mut(k)).zip(rows.picked.chunks_mut(k)).enumerate()
    {
        let t = rows.first_token + i;
        let l_row = &rows.logits[t * e_count..(t + 1) * e_count];
        score_row(l_row, &mut p_row, spec.score).map_err(|bad| (t, bad.problem()))?;
        p_out.iter_mut().zip(&p_row).for_each(|(o, &p)| {
            o.write(p);
        });
        let sel: &[L::Acc] = if spec.bias.is_none() && spec.groups.is_none() {
            &p_row
        } else {
            selection.clear();
            match spec.bias {
                Some(b) => selection.extend(p_row.iter().zip(b).map(|(&p, &b)| p + b)),
                None => selection.extend_from_slice(&p_row),
            }
            if let Some(limit) = spec.groups {
                mask_groups(&mut selection, limit, per_group, &mut group_scores, &mut scratch, &mut order);
            }
            &selection
        };
        top_k(sel, id_row, &mut scratch, &mut order);
        for (score, &e) in pick_row.iter_mut().zip(id_row.iter()) {
            *score = p_row[e as usize];
        }
    }
    Ok(())
}

/// Scores and selects experts for every token of `logits` ([num_tokens, num_experts], row-major).
pub fn gate<L: Activation>(
    logits: &[L],
    num_tokens: usize,
    num_experts: usize,
    spec: &GateSpec<L::Acc>,
) -> Result<Gate<L::Acc>>
where
    L::Acc: ScoreMath,
{
    let (e_count, k) = (num_experts, spec.top_k);
    // probs is written row by row without being zeroed first (a 4 MB memset would be a serial
    // pass as long as the scoring itself); its length is set once every row is written.
    let mut probs: Vec<L::Acc> = Vec::with_capacity(num_tokens * e_count);
    let mut expert_ids = vec![0i32; num_tokens * k];
    let mut picked_scores = vec![<L::Acc as Accum>::ZERO; num_tokens * k];
    if num_tokens == 0 {
        return Ok(Gate { expert_ids, picked_scores, probs });
    }
    let num_tasks = num_tokens.div_ceil(TOKENS_PER_TASK);
    let outcomes = {
        let probs = DisjointChunks::new(&mut probs.spare_capacity_mut()[..num_tokens * e_count], TOKENS_PER_TASK * e_count);
        let ids = DisjointChunks::new(&mut expert_ids, TOKENS_PER_TASK * k);
        let picked = DisjointChunks::new(&mut picked_scores, TOKENS_PER_TASK * k);
        map_tasks(num_tasks, |task| {
            // SAFETY: map_tasks runs each task index once, so each chunk is taken once.
            let (probs, ids, picked) = unsafe { (probs.take(task), ids.take(task), picked.take(task)) };
            let rows = Rows { logits, first_token: task * TOKENS_PER_TASK, probs, ids, picked };
            dispatch(GateTask { rows, spec, e_count })
        })
    };
    check_rows(&outcomes)?;
    // SAFETY: every task returned Ok, and a task returns Ok only after writing every one of its
    // rows of `probs`; the tasks cover all num_tokens * e_count entries of the capacity.
    unsafe { probs.set_len(num_tokens * e_count) };
    Ok(Gate { expert_ids, picked_scores, probs })
}
