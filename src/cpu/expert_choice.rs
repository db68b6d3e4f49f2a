//! Expert-choice routing (Zhou et al. 2022): each expert takes its C highest-probability tokens.

use crate::threads::{map_tasks, DisjointChunks};

use crate::cpu::scores::{check_rows, score_row, RowsOutcome, ScoreMath};
use crate::cpu::simd::{dispatch, Body};
use crate::dtype::{Accum, Activation};
use crate::error::Result;
use crate::routing::{expert_choice_layout, Normalize, RoutingPlan, ScoreFunction};

/// Tokens per parallel task of the softmax; fixed so results do not depend on the thread count.
const TOKENS_PER_TASK: usize = 256;

/// Expert-choice routing of `logits` ([num_tokens, num_experts], row-major). Slot s of a token is
/// expert s: `expert_ids[t, e]` is e if expert e took token t, else -1.
pub fn expert_choice<L: Activation>(
    logits: &[L],
    num_tokens: usize,
    num_experts: usize,
    capacity: Option<usize>,
    capacity_factor: f64,
) -> Result<RoutingPlan<L::Acc>>
where
    L::Acc: ScoreMath,
{
    let (c, rows) = expert_choice_layout(num_tokens, num_experts, capacity, capacity_factor)?;
    let (t_count, e_count) = (num_tokens, num_experts);
    let probs = softmax_rows(logits, t_count, e_count)?;

    // Each expert's chosen tokens, ascending (one task per expert).
    let taken = c.min(t_count);
    let chosen = map_tasks(e_count, |e| dispatch(ChooseTokens { probs: &probs, num_experts: e_count, expert: e, taken }));

    let zero = <L::Acc as Accum>::ZERO;
    let mut expert_ids = vec![-1i32; t_count * e_count];
    let mut weights = vec![zero; t_count * e_count];
    let mut dest = vec![-1i32; t_count * e_count];
    let mut src = vec![-1i32; rows];
    for (e, tokens) in chosen.iter().enumerate() {
        for (i, &t) in tokens.iter().enumerate() {
            let (slot, row) = (t as usize * e_count + e, e * c + i);
            expert_ids[slot] = e as i32;
            weights[slot] = probs[slot];
            dest[slot] = row as i32;
            src[row] = t as i32;
        }
    }
    Ok(RoutingPlan {
        num_tokens: t_count,
        num_experts: e_count,
        slots: e_count,
        num_rows: rows,
        expert_ids,
        weights,
        probs,
        dest,
        src,
        expert_offsets: (0..=e_count).map(|e| (e * c) as i64).collect(),
        tokens_per_expert: vec![taken as i64; e_count],
        assigned_per_expert: vec![taken as i64; e_count],
        capacity: Some(c),
        score: Some(ScoreFunction::Softmax),
        normalize: Normalize::None,
        scale: 1.0,
    })
}

/// Softmax of every row, in parallel; rejects NaN and all -inf rows.
pub fn softmax_rows<L: Activation>(logits: &[L], num_tokens: usize, num_experts: usize) -> Result<Vec<L::Acc>>
where
    L::Acc: ScoreMath,
{
    let mut probs = vec![<L::Acc as Accum>::ZERO; num_tokens * num_experts];
    if probs.is_empty() {
        return Ok(probs);
    }
    let num_tasks = num_tokens.div_ceil(TOKENS_PER_TASK);
    let outcomes = {
        let chunk = TOKENS_PER_TASK * num_experts;
        let chunks = DisjointChunks::new(&mut probs, chunk);
        map_tasks(num_tasks, |task| {
            // SAFETY: map_tasks runs each task index once, so each chunk is taken once.
            let p = unsafe { chunks.take(task) };
            let l = &logits[task * chunk..task * chunk + p.len()];
            dispatch(SoftmaxTask { first_token: task * TOKENS_PER_TASK, num_experts, logits: l, probs: p })
        })
    };
    check_rows(&outcomes)?;
    Ok(probs)
}

/// One expert's choice: its `taken` best tokens (higher probability, then lower token), ascending.
struct ChooseTokens<'a, F> {
    probs: &'a [F],
    num_experts: usize,
    expert: usize,
    taken: usize,
}

impl<F: Accum> Body for ChooseTokens<'_, F> {
    type Output = Vec<u32>;
    #[inline(always)]
    fn run(self) -> Vec<u32> {
        let ChooseTokens { probs, num_experts, expert, taken } = self;
        let t_count = probs.len() / num_experts;
        // Probabilities are >= 0, so their f64 bits order like the values: a u128 key (prob bits,
        // then the complement of the token) makes "higher prob, then lower token" a plain integer
        // comparison.
        let mut keys: Vec<u128> = Vec::with_capacity(t_count);
        for t in 0..t_count {
            let bits = probs[t * num_experts + expert].to_f64().to_bits() as u128;
            keys.push((bits << 32) | (u32::MAX - t as u32) as u128);
        }
        if taken < t_count {
            keys.select_nth_unstable_by(taken, |a, b| b.cmp(a));
        }
        let mut tokens: Vec<u32> = keys[..taken].iter().map(|&key| u32::MAX - key as u32).collect();
        tokens.sort_unstable();
        tokens
    }
}

/// Softmax of one task's rows; Err holds the first bad token.
struct SoftmaxTask<'a, L: Activation> {
    first_token: usize,
    num_experts: usize,
    logits: &'a [L],
    probs: &'a mut [L::Acc],
}

impl<L: Activation> Body for SoftmaxTask<'_, L>
where
    L::Acc: ScoreMath,
{
    type Output = RowsOutcome;
    #[inline(always)]
    fn run(self) -> Self::Output {
        let e = self.num_experts;
        for (i, (p_row, l_row)) in self.probs.chunks_mut(e).zip(self.logits.chunks(e)).enumerate() {
            score_row(l_row, p_row, ScoreFunction::Softmax).map_err(|bad| (self.first_token + i, bad.problem()))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_expert_takes_its_best_tokens() {
        // 4 tokens, 2 experts, capacity 2.
        let logits = [3.0f32, 0.0, 0.0, 3.0, 1.0, 0.0, 0.0, 0.0];
        let plan = expert_choice(&logits, 4, 2, Some(2), 1.0).unwrap();
        // expert 0: tokens 0 and 2; expert 1: token 1, then tokens 2/3 tie at p=0.5 vs 0.27 → 3 (p=0.5).
        assert_eq!(plan.src, vec![0, 2, 1, 3]);
        assert_eq!(plan.expert_ids[0..2], [0, -1]);
        assert_eq!(plan.dest[6..8], [-1, 3]);
        assert_eq!(plan.tokens_per_expert, vec![2, 2]);
    }

    #[test]
    fn capacity_larger_than_tokens_pads() {
        let plan = expert_choice(&[0.0f64, 1.0], 1, 2, Some(3), 1.0).unwrap();
        assert_eq!(plan.src, vec![0, -1, -1, 0, -1, -1]);
        assert_eq!(plan.tokens_per_expert, vec![1, 1]);
    }
}
