//! The CUDA backend: the driver (loaded at run time through cudarc), the embedded PTX kernels and
//! the host side of every op (argument checks, workspace layout, the kernel sequence), launched on
//! the caller's stream with caller-allocated memory; nothing synchronizes.

pub mod combine;
pub mod combine_backward;
pub mod common;
pub mod context;
pub mod expert_choice;
pub mod launch;
pub mod permute;
pub mod permute_backward;
pub mod plan_from_topk;
pub mod regroup;
pub mod route;
pub mod route_backward;
pub mod workspace;

pub use common::{PlanPointers, Rows};
pub use context::{device, driver_available, Device};
