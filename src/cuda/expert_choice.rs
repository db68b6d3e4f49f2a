//! Expert choice on the GPU: softmax scores (the gating kernel), then each expert's C best tokens.

use super::common::{check_i32, fill_padding, PlanPointers};
use super::context::Device;
use super::launch::{Args, Launch};
use super::route::gate_kernel;
use super::workspace::{expert_choice_workspace, gate_shared_bytes, GATE_TOKENS};
use crate::dtype::DType;
use crate::error::Result;
use crate::routing::expert_choice_layout;

/// Where the logits of an expert choice are and where its plan goes.
pub struct ExpertChoiceCall {
    pub stream: u64,
    pub logits: u64,
    pub dtype: DType,
    pub num_tokens: usize,
    pub num_experts: usize,
    pub out: PlanPointers,
    pub workspace: u64,
    pub workspace_bytes: usize,
}

/// Expert choice with `capacity` tokens per expert (or ceil(T * capacity_factor / E)).
pub fn expert_choice(device: &Device, call: &ExpertChoiceCall, capacity: Option<usize>, capacity_factor: f64) -> Result<()> {
    let (t, e) = (call.num_tokens, call.num_experts);
    let (c, rows) = expert_choice_layout(t, e, capacity, capacity_factor)?;
    check_i32("T * E", t * e)?;
    let ws = expert_choice_workspace(call.dtype, t, e);
    ws.check(call.workspace_bytes)?;
    device.make_current()?;
    let go = Launch { device, stream: call.stream };
    let out = &call.out;
    if t == 0 {
        fill_padding(&go, out.src, rows)?;
    }
    let gate_name = gate_kernel(call.dtype)?;
    let shared = gate_shared_bytes(e, call.dtype).unwrap_or(0) as u32;
    let at = |offset: usize| call.workspace + offset as u64;
    let probs_t = ws.probs_t.map_or(0, at);
    let args = Args::new().ptr(call.logits).i32(t as i32).i32(e as i32).i32(0).i32(0).i32(0).ptr(0).i32(0).i32(0);
    let args = args.ptr(out.probs).ptr(0).ptr(0).ptr(ws.row_scratch.map_or(0, at)).ptr(0).ptr(probs_t).ptr(out.src).i64(rows as i64);
    go.run(gate_name, t.div_ceil(GATE_TOKENS) as u64, GATE_TOKENS as u32, shared, args)?;
    let kernel = if call.dtype == DType::F64 { "expert_choice_f64" } else { "expert_choice_f32" };
    let args = Args::new().ptr(out.probs).ptr(probs_t).i32(t as i32).i32(e as i32).i32(c as i32).ptr(out.expert_ids).ptr(out.weights).ptr(out.dest).ptr(out.src);
    go.run(kernel, e as u64, 256, 0, args.ptr(out.expert_offsets).ptr(out.tokens_per_expert).ptr(out.assigned_per_expert))
}

#[cfg(test)]
mod tests {
    use crate::cuda::context::has_kernel;

    #[test]
    fn its_kernels_are_embedded() {
        assert!(has_kernel("expert_choice_f32") && has_kernel("expert_choice_f64"));
    }
}
