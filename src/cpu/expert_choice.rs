//! Expert-choice routing (Zhou et al. 2022): each expert takes its C highest-probability tokens.

use rayon::prelude::*;

use crate::threads::min_len;

use crate::cpu::scores::{score_row, ScoreMath};
use crate::cpu::simd::{dispatch, Body};
use crate::dtype::{Accum, Activation};
use crate::error::{Error, Result};
use crate::routing::capacity::{check_num_tokens, expert_choice_capacity, num_rows, Layout};
use crate::routing::{Normalize, RoutingPlan, ScoreFunction};

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
    if num_experts == 0 {
        return Err(Error::Argument {
            arg: "logits",
            got: "0 experts".into(),
            expected: "at least 1 expert (logits.shape[1] >= 1)".into(),
        });
    }
    check_num_tokens(num_tokens)?;
    let (t_count, e_count) = (num_tokens, num_experts);
    let c = expert_choice_capacity(capacity, capacity_factor, t_count, e_count)?;
    let rows = num_rows(Layout::Capacity(c), t_count, e_count, e_count)?;
    let probs = softmax_rows(logits, t_count, e_count)?;

    // Each expert's chosen tokens, ascending. Probabilities are >= 0, so their f32/f64 bits order
    // like the values: a u64/u128 key (prob bits, then the complement of the token) makes "higher
    // prob, then lower token" a plain integer comparison.
    let taken = c.min(t_count);
    let chosen: Vec<Vec<u32>> = (0..e_count)
        .into_par_iter().with_min_len(min_len())
        .map(|e| {
            let mut keys: Vec<u128> = (0..t_count)
                .map(|t| ((probs[t * e_count + e].to_f64().to_bits() as u128) << 32) | (u32::MAX - t as u32) as u128)
                .collect();
            if taken < t_count {
                keys.select_nth_unstable_by(taken, |a, b| b.cmp(a));
            }
            let mut tokens: Vec<u32> = keys[..taken].iter().map(|&key| u32::MAX - key as u32).collect();
            tokens.sort_unstable();
            tokens
        })
        .collect();

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
        score: ScoreFunction::Softmax,
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
    let outcomes: Vec<std::result::Result<(), (usize, &'static str)>> = probs
        .par_chunks_mut(TOKENS_PER_TASK * num_experts).with_min_len(min_len())
        .zip(logits.par_chunks(TOKENS_PER_TASK * num_experts))
        .enumerate()
        .map(|(task, (p, l))| dispatch(SoftmaxTask { first_token: task * TOKENS_PER_TASK, num_experts, logits: l, probs: p }))
        .collect();
    if let Some(&Err((token, problem))) = outcomes.iter().find(|o| o.is_err()) {
        return Err(Error::Logits { arg: "logits", problem, token });
    }
    Ok(probs)
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
    type Output = std::result::Result<(), (usize, &'static str)>;
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
