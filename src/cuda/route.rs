//! Token-choice routing on the GPU: gating (scores, picks), the plan (capacity, rows), the final weights.

use super::common::{check_i32, fill_padding, kernel_name, PlanPointers, SHARED_LIMIT};
use super::context::{cuda_error, Device};
use super::launch::{Args, Launch};
use super::workspace::{gate_shared_bytes, route_workspace, Workspace, CHUNK, GATE_TOKENS};
use crate::dtype::DType;
use crate::error::Result;
use crate::routing::{route_layout, Layout, Normalize, Priority, RouteOptions, ScoreFunction};

/// Per-expert counters of the plan kernels live in shared memory.
const MAX_EXPERTS: usize = SHARED_LIMIT / 4;
const RANK_ROWS: i32 = 0;
const RANK_ROWS_CAPPED: i32 = 1;
const RANK_FLAGS: i32 = 2;
const RANK_ORDER: i32 = 3;

/// Everything a CUDA route needs besides options: where the data is and where it goes.
pub struct RouteCall {
    pub stream: u64,
    pub logits: u64,
    pub dtype: DType,
    pub num_tokens: usize,
    pub num_experts: usize,
    /// Selection bias in the accumulation dtype, if any (options.bias must be None: a device bias
    /// is checked by the caller).
    pub bias: Option<u64>,
    pub out: PlanPointers,
    pub workspace: u64,
    pub workspace_bytes: usize,
}

/// Token-choice routing on the GPU: gating, then the plan, then the final weights.
pub fn route(device: &Device, call: &RouteCall, options: &RouteOptions) -> Result<()> {
    let (t, e, k) = (call.num_tokens, call.num_experts, options.top_k);
    let (layout, rows) = route_layout(options, t, e)?;
    if e > MAX_EXPERTS {
        return Err(cuda_error(format!("logits: {e} experts, the CUDA kernels support at most {MAX_EXPERTS}")));
    }
    check_i32("T * k", t * k)?;
    check_i32("rows", rows)?;
    let ws = route_workspace(call.dtype, t, e, k, options.groups.map(|g| g.num_groups));
    ws.check(call.workspace_bytes)?;
    device.make_current()?;
    let go = Launch { device, stream: call.stream };
    gate(&go, call, options, &ws, rows)?;
    let rows_of = PlanRows { out: &call.out, workspace: call.workspace, ws: &ws, num_tokens: t, num_experts: e, top_k: k, dtype: call.dtype };
    lay_out_rows(&go, &rows_of, layout, options.priority)?;
    let dropless = matches!(layout, Layout::Dropless { .. });
    if dropless && options.normalize != Normalize::Kept && options.scale == 1.0 {
        return Ok(()); // no pick dropped: the gating kernel's weights are final
    }
    finalize_weights(&go, &call.out, call.dtype, t, k, options.normalize == Normalize::Kept, options.scale)
}

/// Where the plan kernels read the picks (out.expert_ids, and out.weights as the "score" keys) and
/// write the rows, and the sizes.
pub(super) struct PlanRows<'a> {
    pub out: &'a PlanPointers,
    pub workspace: u64,
    pub ws: &'a Workspace,
    pub num_tokens: usize,
    pub num_experts: usize,
    pub top_k: usize,
    pub dtype: DType,
}

/// Lays out the picks' rows: dest, src (its padding rows already -1), the offsets and the counts,
/// dropping by `priority` in a capacity layout. Picks whose expert id is outside [0, E) get no row.
pub(super) fn lay_out_rows(go: &Launch, p: &PlanRows, layout: Layout, priority: Priority) -> Result<()> {
    let (t, e, k) = (p.num_tokens, p.num_experts, p.top_k);
    let picks = check_i32("T * k", t * k)?;
    let at = |offset: usize| p.workspace + offset as u64;
    let (out, ws) = (p.out, p.ws);
    let (t32, e32, k32) = (t as i32, e as i32, k as i32);
    let chunks = (t * k).div_ceil(CHUNK).max(1) as u64;
    let counters = (e * 4) as u32;
    let (counts, totals, seg_start, done) = (at(ws.counts), at(ws.totals), at(ws.seg_start), at(ws.done));
    // Picks per expert in each chunk of an order (token-major or slot-major), counting only the
    // picks flagged in `only` (0: all), scanned into per-chunk prefixes and per-expert totals;
    // with `layout`, the scan's last block also writes the segment offsets (and the plan's counts).
    let count = |slot_major: bool, only: u64, layout: Option<(i32, i32)>| -> Result<()> {
        let args = Args::new().ptr(out.expert_ids).ptr(only).i32(picks).i32(t32).i32(k32).i32(e32).i32(slot_major as i32);
        go.run("count_chunks", chunks, 256, counters, args.ptr(counts).ptr(if layout.is_some() { done } else { 0 }))?;
        let (pad_to, capacity) = layout.unwrap_or((1, -1));
        let args = Args::new().ptr(counts).i32(chunks as i32).i32(e32).ptr(totals).ptr(if layout.is_some() { done } else { 0 });
        let args = args.i32(pad_to).i32(capacity).ptr(seg_start).ptr(out.expert_offsets).ptr(out.tokens_per_expert).ptr(out.assigned_per_expert);
        go.run("scan_chunks", e as u64, 256, 0, args)
    };
    let offsets = |pad_to: i32, capacity: i32, outputs: bool| -> Result<()> {
        let o = |p: u64| if outputs { p } else { 0 };
        go.run(
            "segment_offsets",
            1,
            1024,
            0,
            Args::new().ptr(totals).i32(e32).i32(pad_to).i32(capacity).ptr(seg_start).ptr(o(out.expert_offsets)).ptr(o(out.tokens_per_expert)).ptr(o(out.assigned_per_expert)),
        )
    };
    // Each pick's rank within its expert in that order, used as `mode` says (kernels/plan.cu).
    let assign = |slot_major: bool, only: u64, mode: i32, capacity: i32| -> Result<()> {
        go.run(
            "rank_chunks",
            chunks,
            32,
            counters,
            Args::new()
                .ptr(out.expert_ids)
                .ptr(only)
                .i32(picks)
                .i32(t32)
                .i32(k32)
                .i32(e32)
                .i32(slot_major as i32)
                .ptr(counts)
                .ptr(seg_start)
                .i32(mode)
                .i32(capacity)
                .ptr(out.dest)
                .ptr(out.src)
                .ptr(at(ws.flags))
                .ptr(at(ws.order)),
        )
    };
    match layout {
        Layout::Dropless { pad_to } => {
            count(false, 0, Some((pad_to as i32, -1)))?;
            assign(false, 0, RANK_ROWS, 0)?;
        }
        Layout::Capacity(c) => {
            let c = c as i32;
            match priority {
                Priority::Token => {
                    count(false, 0, Some((1, c)))?;
                    assign(false, 0, RANK_ROWS_CAPPED, c)?;
                }
                Priority::Slot => {
                    count(true, 0, Some((1, c)))?;
                    assign(true, 0, RANK_FLAGS, c)?;
                    count(false, at(ws.flags), None)?;
                    assign(false, at(ws.flags), RANK_ROWS, c)?;
                }
                Priority::Score => {
                    count(false, 0, None)?;
                    offsets(1, -1, false)?;
                    assign(false, 0, RANK_ORDER, 0)?;
                    let keep = if p.dtype == DType::F64 { "keep_by_score_f64" } else { "keep_by_score_f32" };
                    go.run(keep, e as u64, 256, 0, Args::new().ptr(at(ws.order)).ptr(seg_start).ptr(totals).ptr(out.weights).i32(k32).i32(c).ptr(out.dest).ptr(out.src))?;
                    offsets(1, c, true)?;
                }
            }
        }
    }
    Ok(())
}

/// The final weights: dropped picks' weights 0, then the "kept" normalization, then `scale`.
pub(super) fn finalize_weights(go: &Launch, out: &PlanPointers, dtype: DType, t: usize, k: usize, normalize_kept: bool,
                               scale: f64) -> Result<()> {
    let finalize = if dtype == DType::F64 { "finalize_weights_f64" } else { "finalize_weights_f32" };
    let args = Args::new().ptr(out.weights).ptr(out.dest).i32(t as i32).i32(k as i32).i32(normalize_kept as i32);
    let args = if dtype == DType::F64 { args.f64(scale) } else { args.f32(scale as f32) };
    go.run(finalize, t.div_ceil(128) as u64, 128, 0, args.i32((scale != 1.0) as i32))
}

/// Largest number of experts the 16-lanes-per-token gating kernel takes (16 columns per lane).
const LANES_MAX_EXPERTS: usize = 256;

/// The one-thread-per-token gating kernels by dtype (expert choice's scores too).
const GATE_KERNELS: [(&str, &str); 4] = [("f32", "gate_f32"), ("f64", "gate_f64"), ("f16", "gate_f16"), ("bf16", "gate_bf16")];

/// The 16-lanes-per-token kernels by (dtype, columns per lane, list length).
const GATE_LANES_KERNELS: [(&str, &str); 12] = [
    ("f32_n4_k2", "gate_lanes_f32_n4_k2"), ("f32_n4_k8", "gate_lanes_f32_n4_k8"),
    ("f32_n16_k2", "gate_lanes_f32_n16_k2"), ("f32_n16_k8", "gate_lanes_f32_n16_k8"),
    ("f16_n4_k2", "gate_lanes_f16_n4_k2"), ("f16_n4_k8", "gate_lanes_f16_n4_k8"),
    ("f16_n16_k2", "gate_lanes_f16_n16_k2"), ("f16_n16_k8", "gate_lanes_f16_n16_k8"),
    ("bf16_n4_k2", "gate_lanes_bf16_n4_k2"), ("bf16_n4_k8", "gate_lanes_bf16_n4_k8"),
    ("bf16_n16_k2", "gate_lanes_bf16_n16_k2"), ("bf16_n16_k8", "gate_lanes_bf16_n16_k8"),
];

/// The one-thread-per-token gating kernel of `dtype`.
pub(super) fn gate_kernel(dtype: DType) -> Result<&'static str> {
    kernel_name(&GATE_KERNELS, dtype.suffix())
}

/// Scores and picks of every token: the 16-lanes-per-token kernel for the common case (no group
/// limit, k <= 8, E <= 256, float32 scores), else the one-thread-per-token kernel.
/// Both also set the `rows` entries of src to -1.
fn gate(go: &Launch, call: &RouteCall, options: &RouteOptions, ws: &Workspace, rows: usize) -> Result<()> {
    if call.num_tokens == 0 {
        return fill_padding(go, call.out.src, rows);
    }
    let (t, e, k) = (call.num_tokens, call.num_experts, options.top_k);
    let out = &call.out;
    let sigmoid = (options.score == ScoreFunction::Sigmoid) as i32;
    let normalize_topk = (options.normalize == Normalize::TopK) as i32;
    if options.groups.is_none() && k <= 8 && e <= LANES_MAX_EXPERTS && call.dtype != DType::F64 {
        let columns = if e <= 64 { 4 } else { 16 };
        let list = if k <= 2 { 2 } else { 8 };
        let key = format!("{}_n{columns}_k{list}", call.dtype.suffix());
        let kernel = kernel_name(&GATE_LANES_KERNELS, &key)?;
        let args = Args::new().ptr(call.logits).i32(t as i32).i32(e as i32).i32(k as i32).i32(sigmoid).i32(normalize_topk);
        let args = args.opt_ptr(call.bias).ptr(out.probs).ptr(out.expert_ids).ptr(out.weights).ptr(out.src).i64(rows as i64);
        return go.run(kernel, t.div_ceil(8) as u64, 128, 0, args);
    }
    let gate_name = gate_kernel(call.dtype)?;
    let shared = gate_shared_bytes(e, call.dtype).unwrap_or(0) as u32;
    let (groups, topk_groups) = options.groups.map_or((0, 0), |g| (g.num_groups as i32, g.topk_groups as i32));
    let at = |offset: usize| call.workspace + offset as u64;
    let args = Args::new().ptr(call.logits).i32(t as i32).i32(e as i32).i32(k as i32).i32(sigmoid).i32(normalize_topk);
    let args = args.opt_ptr(call.bias).i32(groups).i32(topk_groups).ptr(out.probs).ptr(out.expert_ids).ptr(out.weights);
    let args = args.ptr(ws.row_scratch.map_or(0, at)).ptr(ws.group_scratch.map_or(0, at)).ptr(0).ptr(out.src).i64(rows as i64);
    go.run(gate_name, t.div_ceil(GATE_TOKENS) as u64, GATE_TOKENS as u32, shared, args)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cuda::context::has_kernel;

    #[test]
    fn every_gating_and_plan_kernel_is_embedded() {
        let tables = GATE_KERNELS.iter().chain(&GATE_LANES_KERNELS).map(|(_, name)| *name);
        let plan = ["count_chunks", "scan_chunks", "segment_offsets", "rank_chunks", "fill_i32", "keep_by_score_f32",
                    "keep_by_score_f64", "finalize_weights_f32", "finalize_weights_f64"];
        for name in tables.chain(plan) {
            assert!(has_kernel(name), "{name}");
        }
    }
}
