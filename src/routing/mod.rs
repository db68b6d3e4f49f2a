//! Backend-independent routing logic: options and their checks, capacity, and the RoutingPlan.

pub mod capacity;
pub mod options;
pub mod plan;
pub mod validate;

pub use capacity::{expert_choice_layout, route_layout, Layout};
pub use options::{GroupLimit, Normalize, Priority, RouteOptions, ScoreFunction};
pub use plan::{PlanFields, RoutingPlan, PLAN_FIELDS};
