//! Token-choice routing options, parsed from their string names and checked against the input shape.

use crate::ensure_argument;
use crate::error::{Error, Result};

/// How logits become scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScoreFunction {
    Softmax,
    Sigmoid,
}

/// How the picked scores become combine weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Normalize {
    /// Raw scores.
    None,
    /// Divided by the sum of the k picked scores (before capacity).
    TopK,
    /// Divided by the sum of the kept picks' scores (after capacity).
    Kept,
}

/// Which picks an over-full expert keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    /// All slot-0 picks, then all slot-1 picks, ..., each slot in token order.
    Slot,
    /// Token order, then slot.
    Token,
    /// Descending pre-capacity weight, ties by (token, slot).
    Score,
}

fn unknown(arg: &'static str, got: &str, expected: &str) -> Error {
    Error::Argument { arg, got: format!("{got:?}"), expected: expected.to_string() }
}

impl ScoreFunction {
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "softmax" => Ok(Self::Softmax),
            "sigmoid" => Ok(Self::Sigmoid),
            _ => Err(unknown("score", name, "\"softmax\" or \"sigmoid\"")),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Self::Softmax => "softmax",
            Self::Sigmoid => "sigmoid",
        }
    }
}

impl Normalize {
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "none" => Ok(Self::None),
            "topk" => Ok(Self::TopK),
            "kept" => Ok(Self::Kept),
            _ => Err(unknown("normalize", name, "\"none\", \"topk\" or \"kept\"")),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::TopK => "topk",
            Self::Kept => "kept",
        }
    }
}

impl Priority {
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "slot" => Ok(Self::Slot),
            "token" => Ok(Self::Token),
            "score" => Ok(Self::Score),
            _ => Err(unknown("priority", name, "\"slot\", \"token\" or \"score\"")),
        }
    }
}

/// Checks that the logits have at least one expert (route and expert choice alike).
pub fn check_num_experts(num_experts: usize) -> Result<()> {
    let e = num_experts;
    ensure_argument!(e >= 1, "logits", format!("{e} experts"), "at least 1 expert (logits.shape[1] >= 1)");
    Ok(())
}

/// How a plan from given picks (`plan_from_topk`) lays out its rows: route's capacity options,
/// without the gating.
#[derive(Debug, Clone, PartialEq)]
pub struct PicksOptions {
    pub capacity: CapacityRequest,
    pub priority: Priority,
    pub pad_to: usize,
}

/// Checks that `k` picks per token are possible among `num_experts` experts: k in [1, E].
pub fn check_top_k(k: usize, num_experts: usize) -> Result<()> {
    let e = num_experts;
    ensure_argument!(k >= 1 && k <= e, "k", k, format!("an integer in [1, {e}] (the number of experts)"));
    Ok(())
}

/// Group-limited routing: experts split into `num_groups` equal groups, only the best
/// `topk_groups` groups stay selectable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupLimit {
    pub num_groups: usize,
    pub topk_groups: usize,
}

/// How capacity is requested; `None` everywhere means dropless.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CapacityRequest {
    pub capacity: Option<usize>,
    pub capacity_factor: Option<f64>,
    pub min_capacity: usize,
    pub capacity_multiple: usize,
}

impl Default for CapacityRequest {
    fn default() -> Self {
        Self { capacity: None, capacity_factor: None, min_capacity: 0, capacity_multiple: 1 }
    }
}

/// Every option of `route`.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteOptions {
    pub top_k: usize,
    pub score: ScoreFunction,
    pub normalize: Normalize,
    pub scale: f64,
    /// Selection-only bias, one per expert.
    pub bias: Option<Vec<f64>>,
    pub groups: Option<GroupLimit>,
    pub capacity: CapacityRequest,
    pub priority: Priority,
    pub pad_to: usize,
}

impl RouteOptions {
    /// Defaults of the Python API for `top_k` picks.
    pub fn new(top_k: usize) -> Self {
        Self {
            top_k,
            score: ScoreFunction::Softmax,
            normalize: Normalize::TopK,
            scale: 1.0,
            bias: None,
            groups: None,
            capacity: CapacityRequest::default(),
            priority: Priority::Slot,
            pad_to: 1,
        }
    }

    /// Checks every option against `num_experts`.
    pub fn check(&self, num_experts: usize) -> Result<()> {
        let (k, e) = (self.top_k, num_experts);
        check_num_experts(e)?;
        check_top_k(k, e)?;
        ensure_argument!(self.scale.is_finite(), "scale", self.scale, "a finite number");
        ensure_argument!(self.pad_to >= 1, "pad_to", self.pad_to, "an integer >= 1");
        if let Some(bias) = &self.bias {
            if bias.len() != e {
                return Err(Error::Shape {
                    arg: "bias",
                    got: vec![bias.len()],
                    expected: format!("[{e}] (one per expert)"),
                });
            }
            if let Some(i) = bias.iter().position(|b| !b.is_finite()) {
                return Err(Error::Argument {
                    arg: "bias",
                    got: format!("{} at expert {i}", bias[i]),
                    expected: "finite values".into(),
                });
            }
        }
        if let Some(GroupLimit { num_groups, topk_groups }) = self.groups {
            ensure_argument!(
                num_groups >= 1 && e % num_groups == 0,
                "num_groups",
                num_groups,
                format!("a divisor of the number of experts {e}")
            );
            ensure_argument!(
                topk_groups >= 1 && topk_groups <= num_groups,
                "topk_groups",
                topk_groups,
                format!("an integer in [1, num_groups={num_groups}]")
            );
            let selectable = topk_groups * (e / num_groups);
            ensure_argument!(
                k <= selectable,
                "k",
                k,
                format!("at most topk_groups * experts per group = {selectable} selectable experts")
            );
        }
        self.capacity.check()
    }
}

impl CapacityRequest {
    pub fn check(&self) -> Result<()> {
        if let (Some(c), Some(f)) = (self.capacity, self.capacity_factor) {
            return Err(Error::Argument {
                arg: "capacity",
                got: format!("capacity={c} and capacity_factor={f}"),
                expected: "at most one of capacity and capacity_factor".into(),
            });
        }
        if let Some(f) = self.capacity_factor {
            ensure_argument!(f.is_finite() && f > 0.0, "capacity_factor", f, "a finite number > 0");
        }
        ensure_argument!(self.capacity_multiple >= 1, "capacity_multiple", self.capacity_multiple, "an integer >= 1");
        Ok(())
    }
}
