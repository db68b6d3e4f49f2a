//! The RoutingPlan: which expert each (token, slot) went to, its weight, and where its row lives.

use super::options::{Normalize, ScoreFunction};

/// The output of `route` / `expert_choice`; see DESIGN.md for the meaning of each field.
/// Row-major flat vectors: `[T, S]` fields are indexed `t * slots + s`.
#[derive(Debug, Clone, PartialEq)]
pub struct RoutingPlan<F> {
    pub num_tokens: usize,
    pub num_experts: usize,
    /// S: k for token choice, E for expert choice (slot s is expert s).
    pub slots: usize,
    /// R: rows of the permuted buffer.
    pub num_rows: usize,
    pub expert_ids: Vec<i32>,
    pub weights: Vec<F>,
    pub probs: Vec<F>,
    pub dest: Vec<i32>,
    pub src: Vec<i32>,
    pub expert_offsets: Vec<i64>,
    pub tokens_per_expert: Vec<i64>,
    pub assigned_per_expert: Vec<i64>,
    pub capacity: Option<usize>,
    pub score: ScoreFunction,
    pub normalize: Normalize,
    pub scale: f64,
}

impl<F> RoutingPlan<F> {
    /// Picks that were made but did not fit their expert's capacity.
    pub fn num_dropped(&self) -> usize {
        self.expert_ids.iter().zip(&self.dest).filter(|&(&e, &d)| e >= 0 && d < 0).count()
    }
}
