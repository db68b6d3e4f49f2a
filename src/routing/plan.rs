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
    /// How the logits were scored; None for a plan built from given picks (`plan_from_picks`).
    pub score: Option<ScoreFunction>,
    pub normalize: Normalize,
    pub scale: f64,
}

impl<F> RoutingPlan<F> {
    /// Picks that were made but did not fit their expert's capacity.
    pub fn num_dropped(&self) -> usize {
        self.expert_ids.iter().zip(&self.dest).filter(|&(&e, &d)| e >= 0 && d < 0).count()
    }
}

/// Declares `PlanFields` and `PLAN_FIELDS` from one list of names, so that the order is written once.
macro_rules! plan_fields {
    ($($field:ident),+ $(,)?) => {
        /// One value per array of a plan (arrays, device pointers, ...), by name.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub struct PlanFields<T> {
            $(pub $field: T,)+
        }

        /// The names of a plan's arrays in the order the bindings exchange them (`_core.PLAN_FIELDS`):
        /// `route` / `expert_choice` return the arrays in this order, `cuda_route` /
        /// `cuda_expert_choice` take their output pointers in it.
        pub const PLAN_FIELDS: [&str; 8] = [$(stringify!($field)),+];

        impl<T> PlanFields<T> {
            /// The fields from values in `PLAN_FIELDS` order.
            pub fn from_array([$($field),+]: [T; 8]) -> Self {
                Self { $($field),+ }
            }
            /// The values in `PLAN_FIELDS` order.
            pub fn into_array(self) -> [T; 8] {
                [$(self.$field),+]
            }
        }
    };
}
plan_fields!(weights, probs, expert_ids, dest, src, expert_offsets, tokens_per_expert, assigned_per_expert);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_fields_round_trip_in_their_order() {
        let fields = PlanFields::from_array(PLAN_FIELDS);
        assert_eq!((fields.weights, fields.src, fields.assigned_per_expert), ("weights", "src", "assigned_per_expert"));
        assert_eq!(fields.into_array(), PLAN_FIELDS);
    }
}
