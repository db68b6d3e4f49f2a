//! CPU kernels (rayon) on plain slices: gating, plan construction, expert choice, permute,
//! combine, the backward passes and the expert-parallel regroup.

pub mod combine;
pub mod combine_backward;
pub mod expert_choice;
pub mod fast_math;
pub mod given_picks;
pub mod gating;
pub mod indices;
pub mod noisy_load;
pub mod permute;
pub mod regroup;
pub mod route;
pub mod route_backward;
pub mod scores;
pub mod select;
pub mod simd;
pub mod stream;
#[cfg(test)]
pub mod test_plan;
pub mod token_plan;
