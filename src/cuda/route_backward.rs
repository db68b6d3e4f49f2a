//! Route's backward pass on the GPU: the gradient of the weights (and probs) w.r.t. the logits.

use super::common::{check_i32, SHARED_LIMIT};
use super::context::Device;
use super::launch::{Args, Launch};
use crate::dtype::DType;
use crate::error::Result;
use crate::routing::{Normalize, ScoreFunction};

/// The plan fields route's backward pass reads, as device pointers.
pub struct RouteBackwardCall {
    pub stream: u64,
    /// The dtype of probs and of the gradients: float32 or float64 (else a DType error).
    pub dtype: DType,
    pub num_tokens: usize,
    pub num_experts: usize,
    pub slots: usize,
    pub grad_weights: u64,
    /// The gradient of probs, if any.
    pub grad_probs: Option<u64>,
    pub probs: u64,
    pub expert_ids: u64,
    pub dest: u64,
    pub score: ScoreFunction,
    pub normalize: Normalize,
    pub scale: f64,
    pub grad_logits: u64,
}

/// grad_logits ([T, E]) from the gradients of the weights and probs.
pub fn route_backward(device: &Device, call: &RouteBackwardCall) -> Result<()> {
    let double = call.dtype.check_accum("plan.probs")? == DType::F64;
    let t = call.num_tokens;
    if t == 0 || call.num_experts == 0 {
        return Ok(());
    }
    check_i32("T * E", t * call.num_experts)?;
    device.make_current()?;
    let normalize = match call.normalize {
        Normalize::None => 0,
        Normalize::TopK => 1,
        Normalize::Kept => 2,
    };
    let args = Args::new().ptr(call.grad_weights).opt_ptr(call.grad_probs).ptr(call.probs).ptr(call.expert_ids).ptr(call.dest);
    let args = args.i32(t as i32).i32(call.num_experts as i32).i32(call.slots as i32).i32((call.score == ScoreFunction::Sigmoid) as i32).i32(normalize);
    let (kernel, args) = if double { ("route_backward_f64", args.f64(call.scale)) } else { ("route_backward_f32", args.f32(call.scale as f32)) };
    // 32 tokens per block; their gradient rows in shared memory when they fit.
    let bytes = 32 * (call.num_experts + 1) * call.dtype.acc_bytes();
    let in_shared = bytes <= SHARED_LIMIT;
    let shared = if in_shared { bytes as u32 } else { 0 };
    Launch { device, stream: call.stream }.run(kernel, t.div_ceil(32) as u64, 32, shared, args.ptr(call.grad_logits).i32(in_shared as i32))
}

#[cfg(test)]
mod tests {
    use crate::cuda::context::has_kernel;

    #[test]
    fn its_kernels_are_embedded() {
        assert!(has_kernel("route_backward_f32") && has_kernel("route_backward_f64"));
    }
}
