//! Bindings of the CUDA ops: device pointers (ints) of tensors PyTorch allocated, and the stream
//! (torch's current one) the kernels run on. Shapes were checked by the Python front.

use pyo3::prelude::*;

use super::routing::route_options;
use crate::cuda::{self, ops};
use crate::dtype::DType;
use crate::routing::{Normalize, ScoreFunction};

fn dtype(name: &str, arg: &'static str) -> PyResult<DType> {
    DType::parse(name).ok_or_else(|| {
        crate::Error::DType { arg, got: name.to_string(), expected: "float32, float64, float16 or bfloat16".into() }.into()
    })
}

fn plan_pointers(out: [u64; 8]) -> ops::PlanPointers {
    let [weights, probs, expert_ids, dest, src, expert_offsets, tokens_per_expert, assigned_per_expert] = out;
    ops::PlanPointers { weights, probs, expert_ids, dest, src, expert_offsets, tokens_per_expert, assigned_per_expert }
}

/// Whether the NVIDIA driver can be loaded.
#[pyfunction]
fn cuda_driver_available() -> bool {
    cuda::driver_available()
}

/// Initializes device `device` (driver, context, kernel modules); CudaError if it cannot.
#[pyfunction]
fn cuda_init(device: i32) -> PyResult<()> {
    cuda::device(device)?;
    Ok(())
}

/// Bytes of scratch memory route (k > 0) or expert choice (k = 0) needs.
#[pyfunction]
#[pyo3(signature = (dtype_name, num_tokens, num_experts, k, num_groups))]
fn cuda_route_workspace(dtype_name: &str, num_tokens: usize, num_experts: usize, k: usize, num_groups: Option<usize>) -> PyResult<usize> {
    Ok(ops::route_workspace(dtype(dtype_name, "logits")?, num_tokens, num_experts, k, num_groups).bytes)
}

#[pyfunction]
#[pyo3(signature = (device, stream, logits, dtype_name, num_tokens, num_experts, k, score, normalize, scale, bias,
                    num_groups, topk_groups, capacity, capacity_factor, min_capacity, capacity_multiple, priority,
                    pad_to, outputs, workspace, workspace_bytes))]
#[allow(clippy::too_many_arguments)]
fn cuda_route(
    device: i32,
    stream: u64,
    logits: u64,
    dtype_name: &str,
    num_tokens: usize,
    num_experts: usize,
    k: usize,
    score: &str,
    normalize: &str,
    scale: f64,
    bias: u64,
    num_groups: Option<usize>,
    topk_groups: Option<usize>,
    capacity: Option<usize>,
    capacity_factor: Option<f64>,
    min_capacity: usize,
    capacity_multiple: usize,
    priority: &str,
    pad_to: usize,
    outputs: [u64; 8],
    workspace: u64,
    workspace_bytes: usize,
) -> PyResult<()> {
    let options = route_options(k, score, normalize, scale, None, num_groups, topk_groups, capacity, capacity_factor,
                                min_capacity, capacity_multiple, priority, pad_to)?;
    let call = ops::RouteCall {
        stream,
        logits,
        dtype: dtype(dtype_name, "logits")?,
        num_tokens,
        num_experts,
        bias,
        out: plan_pointers(outputs),
        workspace,
        workspace_bytes,
    };
    ops::route(cuda::device(device)?, &call, &options)?;
    Ok(())
}

#[pyfunction]
#[pyo3(signature = (device, stream, logits, dtype_name, num_tokens, num_experts, capacity, capacity_factor, outputs,
                    workspace, workspace_bytes))]
#[allow(clippy::too_many_arguments)]
fn cuda_expert_choice(
    device: i32,
    stream: u64,
    logits: u64,
    dtype_name: &str,
    num_tokens: usize,
    num_experts: usize,
    capacity: Option<usize>,
    capacity_factor: f64,
    outputs: [u64; 8],
    workspace: u64,
    workspace_bytes: usize,
) -> PyResult<()> {
    let call = ops::ExpertChoiceCall {
        stream,
        logits,
        dtype: dtype(dtype_name, "logits")?,
        num_tokens,
        num_experts,
        out: plan_pointers(outputs),
        workspace,
        workspace_bytes,
    };
    ops::expert_choice(cuda::device(device)?, &call, capacity, capacity_factor)?;
    Ok(())
}

/// xp ([rows, hidden]) = x ([tokens, hidden]) gathered by src.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn cuda_permute(device: i32, stream: u64, dtype_name: &str, x: u64, tokens: usize, hidden: usize, src: u64, xp: u64, rows: usize) -> PyResult<()> {
    let x = ops::Rows { ptr: x, rows: tokens };
    let xp = ops::Rows { ptr: xp, rows };
    ops::permute(cuda::device(device)?, stream, dtype(dtype_name, "x")?, x, hidden, src, xp)?;
    Ok(())
}

/// y ([tokens, hidden]) = Σ_s w · rows[dest]; weights 0 for permute's backward pass.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn cuda_combine(device: i32, stream: u64, dtype_name: &str, rows: u64, num_rows: usize, hidden: usize, dest: u64, slots: usize,
                weights: u64, y: u64, tokens: usize) -> PyResult<()> {
    let rows = ops::Rows { ptr: rows, rows: num_rows };
    let y = ops::Rows { ptr: y, rows: tokens };
    ops::combine(cuda::device(device)?, stream, dtype(dtype_name, "yp")?, rows, hidden, dest, slots, weights, y)?;
    Ok(())
}

#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn cuda_combine_backward(device: i32, stream: u64, dtype_name: &str, grad_y: u64, tokens: usize, yp: u64, num_rows: usize,
                         hidden: usize, dest: u64, src: u64, slots: usize, weights: u64, grad_yp: u64, grad_w: u64) -> PyResult<()> {
    let grad_y = ops::Rows { ptr: grad_y, rows: tokens };
    let yp = ops::Rows { ptr: yp, rows: num_rows };
    let dtype = dtype(dtype_name, "yp")?;
    ops::combine_backward(cuda::device(device)?, stream, dtype, grad_y, yp, hidden, dest, src, slots, weights, grad_yp, grad_w)?;
    Ok(())
}

#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn cuda_route_backward(device: i32, stream: u64, double: bool, tokens: usize, experts: usize, slots: usize, grad_weights: u64,
                       grad_probs: u64, probs: u64, expert_ids: u64, dest: u64, score: &str, normalize: &str, scale: f64,
                       grad_logits: u64) -> PyResult<()> {
    let call = ops::RouteBackwardCall {
        stream,
        double,
        num_tokens: tokens,
        num_experts: experts,
        slots,
        grad_weights,
        grad_probs,
        probs,
        expert_ids,
        dest,
        score: ScoreFunction::parse(score)?,
        normalize: Normalize::parse(normalize)?,
        scale,
        grad_logits,
    };
    ops::route_backward(cuda::device(device)?, &call)?;
    Ok(())
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(cuda_driver_available, m)?)?;
    m.add_function(wrap_pyfunction!(cuda_init, m)?)?;
    m.add_function(wrap_pyfunction!(cuda_route_workspace, m)?)?;
    m.add_function(wrap_pyfunction!(cuda_route, m)?)?;
    m.add_function(wrap_pyfunction!(cuda_expert_choice, m)?)?;
    m.add_function(wrap_pyfunction!(cuda_permute, m)?)?;
    m.add_function(wrap_pyfunction!(cuda_combine, m)?)?;
    m.add_function(wrap_pyfunction!(cuda_combine_backward, m)?)?;
    m.add_function(wrap_pyfunction!(cuda_route_backward, m)?)?;
    Ok(())
}
