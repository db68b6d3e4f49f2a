//! The host side of each CUDA op: argument checks, workspace layout and the kernel sequence.
//! Every pointer is device memory the caller allocated (PyTorch); nothing here synchronizes.

use super::context::{cuda_error, Device};
use super::launch::{Args, Launch};
use crate::dtype::DType;
use crate::error::Result;
use crate::routing::capacity::{check_num_tokens, expert_choice_capacity, num_rows, resolve_capacity, Layout};
use crate::routing::{Normalize, Priority, RouteOptions, ScoreFunction};

/// Positions per chunk of the plan kernels (kernels/plan.cu's CHUNK).
const CHUNK: usize = 256;
/// Tokens per block of the gating kernel (kernels/gating.cu's TOKENS_PER_BLOCK).
const GATE_TOKENS: usize = 32;
/// Shared memory a kernel may use without opting in.
const SHARED_LIMIT: usize = 48 * 1024;
/// Per-expert counters of the plan kernels live in shared memory.
const MAX_EXPERTS: usize = SHARED_LIMIT / 4;
const RANK_ROWS: i32 = 0;
const RANK_ROWS_CAPPED: i32 = 1;
const RANK_FLAGS: i32 = 2;
const RANK_ORDER: i32 = 3;

fn suffix(dtype: DType) -> &'static str {
    match dtype {
        DType::F32 => "f32",
        DType::F64 => "f64",
        DType::F16 => "f16",
        DType::BF16 => "bf16",
    }
}

fn acc_bytes(dtype: DType) -> usize {
    if dtype == DType::F64 { 8 } else { 4 }
}

fn elem_bytes(dtype: DType) -> usize {
    match dtype {
        DType::F32 => 4,
        DType::F64 => 8,
        DType::F16 | DType::BF16 => 2,
    }
}

/// A kernel name chosen at run time among a fixed set (names must be 'static for the cache).
fn name(table: &[(&'static str, &'static str)], key: &str) -> Result<&'static str> {
    table.iter().find(|(k, _)| *k == key).map(|(_, n)| *n).ok_or_else(|| cuda_error(format!("no kernel for {key}")))
}

fn check_i32(what: &'static str, value: usize) -> Result<i32> {
    i32::try_from(value).map_err(|_| crate::Error::IndexOverflow { arg: "logits", what, value: value as u128, limit: i32::MAX as i64 })
}

/// Byte offsets of the scratch regions of one route call inside its workspace.
#[derive(Debug, Clone, Copy, Default)]
pub struct RouteWorkspace {
    pub row_scratch: Option<usize>,
    pub group_scratch: Option<usize>,
    pub counts: usize,
    pub totals: usize,
    pub seg_start: usize,
    /// Blocks of scan_chunks done (for its last block).
    pub done: usize,
    pub flags: usize,
    pub order: usize,
    /// Transposed scores ([E, T]) of an expert choice.
    pub probs_t: Option<usize>,
    pub bytes: usize,
}

fn gate_shared_bytes(num_experts: usize, dtype: DType) -> Option<usize> {
    let bytes = GATE_TOKENS * (num_experts + 1) * acc_bytes(dtype);
    (bytes <= SHARED_LIMIT).then_some(bytes)
}

/// The workspace of a route (or, with k = 0, of an expert choice's scores).
pub fn route_workspace(dtype: DType, t: usize, e: usize, k: usize, num_groups: Option<usize>) -> RouteWorkspace {
    let mut at = 0usize;
    let mut take = |bytes: usize| {
        let start = at;
        at += bytes.div_ceil(256) * 256;
        start
    };
    let acc = acc_bytes(dtype);
    let picks = t * k;
    let chunks = picks.div_ceil(CHUNK).max(1);
    let row_scratch = gate_shared_bytes(e, dtype).is_none().then(|| take(t * e * acc));
    let group_scratch = num_groups.map(|g| take(t * g * acc));
    let counts = take(chunks * e * 4);
    let totals = take(e * 4);
    let seg_start = take(e * 4);
    let done = take(4);
    let flags = take(picks);
    let order = take(picks * 4);
    let probs_t = (k == 0).then(|| take(t * e * acc));
    RouteWorkspace { row_scratch, group_scratch, counts, totals, seg_start, done, flags, order, probs_t, bytes: at.max(256) }
}

/// Output pointers of a plan, in moeroute's field order.
#[derive(Debug, Clone, Copy)]
pub struct PlanPointers {
    pub weights: u64,
    pub probs: u64,
    pub expert_ids: u64,
    pub dest: u64,
    pub src: u64,
    pub expert_offsets: u64,
    pub tokens_per_expert: u64,
    pub assigned_per_expert: u64,
}

/// Everything a CUDA route needs besides options: where the data is and where it goes.
pub struct RouteCall {
    pub stream: u64,
    pub logits: u64,
    pub dtype: DType,
    pub num_tokens: usize,
    pub num_experts: usize,
    /// Selection bias in the accumulation dtype, 0 for none (options.bias must be None: a
    /// device bias is checked by the caller).
    pub bias: u64,
    pub out: PlanPointers,
    pub workspace: u64,
    pub workspace_bytes: usize,
}

/// The layout (capacity or dropless) and row count of a route; the shapes the caller allocates.
pub fn route_layout(options: &RouteOptions, t: usize, e: usize) -> Result<(Layout, usize)> {
    options.check(e)?;
    check_num_tokens(t)?;
    let layout = resolve_capacity(&options.capacity, t, options.top_k, e, options.pad_to)?;
    let rows = num_rows(layout, t, options.top_k, e)?;
    Ok((layout, rows))
}

/// Token-choice routing on the GPU: gating, then the plan, then the final weights.
pub fn route(device: &Device, call: &RouteCall, options: &RouteOptions) -> Result<()> {
    let (t, e, k) = (call.num_tokens, call.num_experts, options.top_k);
    let (layout, rows) = route_layout(options, t, e)?;
    if e > MAX_EXPERTS {
        return Err(cuda_error(format!("logits: {e} experts, the CUDA kernels support at most {MAX_EXPERTS}")));
    }
    let picks = check_i32("T * k", t * k)?;
    check_i32("rows", rows)?;
    let ws = route_workspace(call.dtype, t, e, k, options.groups.map(|g| g.num_groups));
    if call.workspace_bytes < ws.bytes {
        return Err(cuda_error(format!("workspace of {} bytes, expected {}", call.workspace_bytes, ws.bytes)));
    }
    device.make_current()?;
    let go = Launch { device, stream: call.stream };
    let at = |offset: usize| call.workspace + offset as u64;
    let out = &call.out;
    let (t32, e32, k32) = (t as i32, e as i32, k as i32);
    gate(&go, call, options, &ws, rows)?;
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
            match options.priority {
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
                    let keep = if call.dtype == DType::F64 { "keep_by_score_f64" } else { "keep_by_score_f32" };
                    go.run(keep, e as u64, 256, 0, Args::new().ptr(at(ws.order)).ptr(seg_start).ptr(totals).ptr(out.weights).i32(k32).i32(c).ptr(out.dest).ptr(out.src))?;
                    offsets(1, c, true)?;
                }
            }
        }
    }
    let dropless = matches!(layout, Layout::Dropless { .. });
    if dropless && options.normalize != Normalize::Kept && options.scale == 1.0 {
        return Ok(()); // no pick dropped: the gating kernel's weights are final
    }
    let finalize = if call.dtype == DType::F64 { "finalize_weights_f64" } else { "finalize_weights_f32" };
    let scale = Args::new().ptr(out.weights).ptr(out.dest).i32(t32).i32(k32).i32((options.normalize == Normalize::Kept) as i32);
    let scale = if call.dtype == DType::F64 { scale.f64(options.scale) } else { scale.f32(options.scale as f32) };
    go.run(finalize, t.div_ceil(128) as u64, 128, 0, scale.i32((options.scale != 1.0) as i32))
}

/// Largest number of experts the 16-lanes-per-token gating kernel takes (16 columns per lane).
const LANES_MAX_EXPERTS: usize = 256;

/// The one-thread-per-token gating kernels by dtype.
const GATE_KERNELS: [(&str, &str); 4] = [("f32", "gate_f32"), ("f64", "gate_f64"), ("f16", "gate_f16"), ("bf16", "gate_bf16")];

/// Marks all `rows` of src as padding (-1): when no gating kernel runs (T = 0), which otherwise does it.
fn fill_padding(go: &Launch, src: u64, rows: usize) -> Result<()> {
    go.run("fill_i32", (rows as u64).div_ceil(256).min(65536), 256, 0, Args::new().ptr(src).i64(rows as i64).i32(-1))
}

/// The 16-lanes-per-token kernels by (dtype, columns per lane, list length).
const GATE_LANES_KERNELS: [(&str, &str); 12] = [
    ("f32_n4_k2", "gate_lanes_f32_n4_k2"), ("f32_n4_k8", "gate_lanes_f32_n4_k8"),
    ("f32_n16_k2", "gate_lanes_f32_n16_k2"), ("f32_n16_k8", "gate_lanes_f32_n16_k8"),
    ("f16_n4_k2", "gate_lanes_f16_n4_k2"), ("f16_n4_k8", "gate_lanes_f16_n4_k8"),
    ("f16_n16_k2", "gate_lanes_f16_n16_k2"), ("f16_n16_k8", "gate_lanes_f16_n16_k8"),
    ("bf16_n4_k2", "gate_lanes_bf16_n4_k2"), ("bf16_n4_k8", "gate_lanes_bf16_n4_k8"),
    ("bf16_n16_k2", "gate_lanes_bf16_n16_k2"), ("bf16_n16_k8", "gate_lanes_bf16_n16_k8"),
];

/// Scores and picks of every token: the 16-lanes-per-token kernel for the common case (no group
/// limit, k <= 8, E <= 256, float32 scores), else the one-thread-per-token kernel.
/// Both also set the `rows` entries of src to -1.
fn gate(go: &Launch, call: &RouteCall, options: &RouteOptions, ws: &RouteWorkspace, rows: usize) -> Result<()> {
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
        let key = format!("{}_n{columns}_k{list}", suffix(call.dtype));
        let kernel = name(&GATE_LANES_KERNELS, &key)?;
        let args = Args::new().ptr(call.logits).i32(t as i32).i32(e as i32).i32(k as i32).i32(sigmoid).i32(normalize_topk);
        let args = args.ptr(call.bias).ptr(out.probs).ptr(out.expert_ids).ptr(out.weights).ptr(out.src).i64(rows as i64);
        return go.run(kernel, t.div_ceil(8) as u64, 128, 0, args);
    }
    let gate_name = name(&GATE_KERNELS, suffix(call.dtype))?;
    let shared = gate_shared_bytes(e, call.dtype).unwrap_or(0) as u32;
    let (groups, topk_groups) = options.groups.map_or((0, 0), |g| (g.num_groups as i32, g.topk_groups as i32));
    let at = |offset: usize| call.workspace + offset as u64;
    let args = Args::new().ptr(call.logits).i32(t as i32).i32(e as i32).i32(k as i32).i32(sigmoid).i32(normalize_topk);
    let args = args.ptr(call.bias).i32(groups).i32(topk_groups).ptr(out.probs).ptr(out.expert_ids).ptr(out.weights);
    let args = args.ptr(ws.row_scratch.map_or(0, at)).ptr(ws.group_scratch.map_or(0, at)).ptr(0).ptr(out.src).i64(rows as i64);
    go.run(gate_name, t.div_ceil(GATE_TOKENS) as u64, GATE_TOKENS as u32, shared, args)
}

/// Expert choice on the GPU: softmax scores, then each expert's C best tokens.
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

/// The capacity and row count of an expert choice.
pub fn expert_choice_layout(t: usize, e: usize, capacity: Option<usize>, capacity_factor: f64) -> Result<(usize, usize)> {
    if e == 0 {
        return Err(crate::Error::Argument { arg: "logits", got: "0 experts".into(), expected: "at least 1 expert (logits.shape[1] >= 1)".into() });
    }
    check_num_tokens(t)?;
    let c = expert_choice_capacity(capacity, capacity_factor, t, e)?;
    Ok((c, num_rows(Layout::Capacity(c), t, e, e)?))
}

pub fn expert_choice(device: &Device, call: &ExpertChoiceCall, capacity: Option<usize>, capacity_factor: f64) -> Result<()> {
    let (t, e) = (call.num_tokens, call.num_experts);
    let (c, rows) = expert_choice_layout(t, e, capacity, capacity_factor)?;
    check_i32("T * E", t * e)?;
    let ws = route_workspace(call.dtype, t, e, 0, None);
    if call.workspace_bytes < ws.bytes {
        return Err(cuda_error(format!("workspace of {} bytes, expected {}", call.workspace_bytes, ws.bytes)));
    }
    device.make_current()?;
    let go = Launch { device, stream: call.stream };
    let out = &call.out;
    if t == 0 {
        fill_padding(&go, out.src, rows)?;
    }
    let gate_name = name(&GATE_KERNELS, suffix(call.dtype))?;
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

/// Elements moved per thread: as many as fit 16 bytes when every row starts 16-byte aligned.
fn pack(dtype: DType, hidden: usize, pointers: &[u64]) -> usize {
    let (elem, widest) = (elem_bytes(dtype), 16 / elem_bytes(dtype));
    let aligned = pointers.iter().all(|&p| p.is_multiple_of(16)) && (hidden * elem).is_multiple_of(16);
    if aligned { widest } else { 1 }
}

/// A row-major [rows, hidden] activation on the device.
#[derive(Debug, Clone, Copy)]
pub struct Rows {
    pub ptr: u64,
    pub rows: usize,
}

/// xp[r] = x[src[r]] (padding rows and out-of-range sources give zero rows).
pub fn permute(device: &Device, stream: u64, dtype: DType, x: Rows, hidden: usize, src: u64, xp: Rows) -> Result<()> {
    let bytes = hidden * elem_bytes(dtype);
    if xp.rows == 0 || bytes == 0 {
        return Ok(());
    }
    check_i32("T", x.rows)?;
    device.make_current()?;
    let width = [16usize, 8, 4, 2]
        .into_iter()
        .find(|&w| bytes.is_multiple_of(w) && x.ptr.is_multiple_of(w as u64) && xp.ptr.is_multiple_of(w as u64))
        .unwrap_or(2);
    let kernel = name(&[("16", "gather_rows_b16"), ("8", "gather_rows_b8"), ("4", "gather_rows_b4"), ("2", "gather_rows_b2")], &width.to_string())?;
    let words = (bytes / width) as i64;
    let block = (words as u64).clamp(32, 256).div_ceil(32) as u32 * 32;
    Launch { device, stream }.run(kernel, xp.rows as u64, block, 0, Args::new().ptr(x.ptr).ptr(xp.ptr).ptr(src).i32(x.rows as i32).i64(words))
}

/// y[t] = Σ_s w[t,s] · rows[dest[t,s]] (weights 0: weight 1, permute's backward pass).
#[allow(clippy::too_many_arguments)]
pub fn combine(device: &Device, stream: u64, dtype: DType, rows: Rows, hidden: usize, dest: u64, slots: usize, weights: u64, y: Rows) -> Result<()> {
    if y.rows == 0 || hidden == 0 {
        return Ok(());
    }
    check_i32("R", rows.rows)?;
    check_i32("H", hidden)?;
    device.make_current()?;
    let v = pack(dtype, hidden, &[rows.ptr, y.ptr]);
    let key = format!("{}_v{}", suffix(dtype), v);
    let kernel = name(
        &[("f32_v1", "combine_f32_v1"), ("f32_v4", "combine_f32_v4"), ("f64_v1", "combine_f64_v1"), ("f64_v2", "combine_f64_v2"),
          ("f16_v1", "combine_f16_v1"), ("f16_v8", "combine_f16_v8"), ("bf16_v1", "combine_bf16_v1"), ("bf16_v8", "combine_bf16_v8")],
        &key,
    )?;
    let block = ((hidden / v) as u64).clamp(32, 128).div_ceil(32) as u32 * 32;
    let args = Args::new().ptr(rows.ptr).ptr(dest).ptr(weights).ptr(y.ptr).i32(slots as i32).i32(hidden as i32).i32(rows.rows as i32);
    Launch { device, stream }.run(kernel, y.rows as u64, block, 0, args)
}

/// grad_yp (one block per row) and grad_w (must be zeroed by the caller).
#[allow(clippy::too_many_arguments)]
pub fn combine_backward(device: &Device, stream: u64, dtype: DType, grad_y: Rows, yp: Rows, hidden: usize, dest: u64, src: u64,
                        slots: usize, weights: u64, grad_yp: u64, grad_w: u64) -> Result<()> {
    if yp.rows == 0 {
        return Ok(());
    }
    check_i32("T", grad_y.rows)?;
    check_i32("H", hidden)?;
    device.make_current()?;
    let v = pack(dtype, hidden, &[grad_y.ptr, yp.ptr, grad_yp]);
    let key = format!("{}_v{}", suffix(dtype), v);
    let kernel = name(
        &[("f32_v1", "combine_backward_f32_v1"), ("f32_v4", "combine_backward_f32_v4"), ("f64_v1", "combine_backward_f64_v1"),
          ("f64_v2", "combine_backward_f64_v2"), ("f16_v1", "combine_backward_f16_v1"), ("f16_v8", "combine_backward_f16_v8"),
          ("bf16_v1", "combine_backward_bf16_v1"), ("bf16_v8", "combine_backward_bf16_v8")],
        &key,
    )?;
    let block = ((hidden / v.max(1)) as u64).clamp(32, 128).div_ceil(32) as u32 * 32;
    let args = Args::new().ptr(grad_y.ptr).ptr(yp.ptr).ptr(dest).ptr(src).ptr(weights).ptr(grad_yp).ptr(grad_w);
    Launch { device, stream }.run(kernel, yp.rows as u64, block, 0, args.i32(grad_y.rows as i32).i32(slots as i32).i32(hidden as i32))
}

/// The plan fields route's backward pass reads, as device pointers.
pub struct RouteBackwardCall {
    pub stream: u64,
    pub double: bool,
    pub num_tokens: usize,
    pub num_experts: usize,
    pub slots: usize,
    pub grad_weights: u64,
    /// 0 when there is no gradient of probs.
    pub grad_probs: u64,
    pub probs: u64,
    pub expert_ids: u64,
    pub dest: u64,
    pub score: ScoreFunction,
    pub normalize: Normalize,
    pub scale: f64,
    pub grad_logits: u64,
}

pub fn route_backward(device: &Device, call: &RouteBackwardCall) -> Result<()> {
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
    let args = Args::new().ptr(call.grad_weights).ptr(call.grad_probs).ptr(call.probs).ptr(call.expert_ids).ptr(call.dest);
    let args = args.i32(t as i32).i32(call.num_experts as i32).i32(call.slots as i32).i32((call.score == ScoreFunction::Sigmoid) as i32).i32(normalize);
    let (kernel, args) = if call.double { ("route_backward_f64", args.f64(call.scale)) } else { ("route_backward_f32", args.f32(call.scale as f32)) };
    // 32 tokens per block; their gradient rows in shared memory when they fit.
    let bytes = 32 * (call.num_experts + 1) * if call.double { 8 } else { 4 };
    let in_shared = bytes <= SHARED_LIMIT;
    let shared = if in_shared { bytes as u32 } else { 0 };
    Launch { device, stream: call.stream }.run(kernel, t.div_ceil(32) as u64, 32, shared, args.ptr(call.grad_logits).i32(in_shared as i32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workspace_regions_are_disjoint_and_aligned() {
        let ws = route_workspace(DType::F32, 1000, 512, 16, Some(8));
        let mut starts = [ws.row_scratch.unwrap(), ws.group_scratch.unwrap(), ws.counts, ws.totals, ws.seg_start, ws.done,
                          ws.flags, ws.order];
        starts.sort();
        assert!(starts.windows(2).all(|w| w[0] < w[1]) && starts.iter().all(|s| s % 256 == 0));
        assert!(ws.bytes >= ws.order + 1000 * 16 * 4);
        // 32 rows of 512 float32 scores do not fit shared memory: the gating rows go to the workspace.
        assert!(route_workspace(DType::F32, 10, 64, 2, None).row_scratch.is_none());
        assert!(route_workspace(DType::F32, 0, 4, 2, None).bytes >= 256);
    }
}
