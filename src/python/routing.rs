//! Bindings of route, expert_choice, route_backward and plan validation.

use numpy::{Element, PyArrayMethods, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::types::PyTuple;

use super::arrays::{dtype, expect_shape, from_vec, input, output_slice, slice, with_activation, output, Stored};
use super::errors::{run_kernel, run_task_kernel};
use crate::cpu;
use crate::cpu::route_backward::WeightsGraph;
use crate::dtype::Accum;
use crate::routing::capacity::{num_rows, resolve_capacity, Layout};
use crate::routing::options::CapacityRequest;
use crate::routing::validate::{validate_plan as validate, PlanArrays};
use crate::routing::{GroupLimit, Normalize, Priority, RouteOptions, RoutingPlan, ScoreFunction};

/// The plan as a tuple (weights, probs, expert_ids, dest, src, expert_offsets, tokens_per_expert,
/// assigned_per_expert, capacity): NumPy arrays in the order of `moeroute.plan.PLAN_FIELDS` (no
/// copies), then the capacity or None.
fn plan_tuple<'py, F: Element>(py: Python<'py>, plan: RoutingPlan<F>) -> PyResult<Bound<'py, PyTuple>> {
    let (t, e, s) = (plan.num_tokens, plan.num_experts, plan.slots);
    let items: [Bound<'py, PyAny>; 9] = [
        from_vec(py, plan.weights, &[t, s])?,
        from_vec(py, plan.probs, &[t, e])?,
        from_vec(py, plan.expert_ids, &[t, s])?,
        from_vec(py, plan.dest, &[t, s])?,
        from_vec(py, plan.src, &[plan.num_rows])?,
        from_vec(py, plan.expert_offsets, &[e + 1])?,
        from_vec(py, plan.tokens_per_expert, &[e])?,
        from_vec(py, plan.assigned_per_expert, &[e])?,
        plan.capacity.into_pyobject(py)?.into_any(),
    ];
    PyTuple::new(py, items)
}

fn logits_shape(shape: &[usize]) -> PyResult<(usize, usize)> {
    expect_shape("logits", shape, &[None, None])?;
    Ok((shape[0], shape[1]))
}

/// route's options from the arguments of the binding (shared with the CUDA binding).
#[allow(clippy::too_many_arguments)]
pub(super) fn route_options(
    k: usize,
    score: &str,
    normalize: &str,
    scale: f64,
    bias: Option<Vec<f64>>,
    num_groups: Option<usize>,
    topk_groups: Option<usize>,
    capacity: Option<usize>,
    capacity_factor: Option<f64>,
    min_capacity: usize,
    capacity_multiple: usize,
    priority: &str,
    pad_to: usize,
) -> PyResult<RouteOptions> {
    let groups = match (num_groups, topk_groups) {
        (None, None) => None,
        (Some(num_groups), Some(topk_groups)) => Some(GroupLimit { num_groups, topk_groups }),
        _ => {
            return Err(crate::Error::Argument {
                arg: "num_groups",
                got: format!("num_groups={num_groups:?}, topk_groups={topk_groups:?}"),
                expected: "both num_groups and topk_groups, or neither".into(),
            }
            .into())
        }
    };
    Ok(RouteOptions {
        top_k: k,
        score: ScoreFunction::parse(score)?,
        normalize: Normalize::parse(normalize)?,
        scale,
        bias,
        groups,
        capacity: CapacityRequest { capacity, capacity_factor, min_capacity, capacity_multiple },
        priority: Priority::parse(priority)?,
        pad_to,
    })
}

/// route(logits, dtype, k, ...) -> the plan as a tuple (see `plan_tuple`).
#[pyfunction]
#[pyo3(signature = (logits, dtype_name, k, score, normalize, scale, bias, num_groups, topk_groups,
                    capacity, capacity_factor, min_capacity, capacity_multiple, priority, pad_to))]
#[allow(clippy::too_many_arguments)]
fn route<'py>(
    py: Python<'py>,
    logits: &Bound<'py, PyAny>,
    dtype_name: &str,
    k: usize,
    score: &str,
    normalize: &str,
    scale: f64,
    bias: Option<Vec<f64>>,
    num_groups: Option<usize>,
    topk_groups: Option<usize>,
    capacity: Option<usize>,
    capacity_factor: Option<f64>,
    min_capacity: usize,
    capacity_multiple: usize,
    priority: &str,
    pad_to: usize,
) -> PyResult<Bound<'py, PyTuple>> {
    let options = route_options(k, score, normalize, scale, bias, num_groups, topk_groups, capacity, capacity_factor,
                                min_capacity, capacity_multiple, priority, pad_to)?;
    with_activation!(dtype(dtype_name, "logits")?, A => {
        let logits = input::<<A as Stored>::Storage>(logits, "logits")?;
        let (t, e) = logits_shape(logits.shape())?;
        let values = A::view(slice(&logits, "logits")?);
        let plan = run_task_kernel(py, t * e, || cpu::route::route(values, t, e, &options))?;
        plan_tuple(py, plan)
    })
}

/// expert_choice(logits, dtype, capacity, capacity_factor) -> the plan as a tuple (see `plan_tuple`).
#[pyfunction]
fn expert_choice<'py>(
    py: Python<'py>,
    logits: &Bound<'py, PyAny>,
    dtype_name: &str,
    capacity: Option<usize>,
    capacity_factor: f64,
) -> PyResult<Bound<'py, PyTuple>> {
    with_activation!(dtype(dtype_name, "logits")?, A => {
        let logits = input::<<A as Stored>::Storage>(logits, "logits")?;
        let (t, e) = logits_shape(logits.shape())?;
        let values = A::view(slice(&logits, "logits")?);
        let plan = run_task_kernel(py, t * e, || cpu::expert_choice::expert_choice(values, t, e, capacity, capacity_factor))?;
        plan_tuple(py, plan)
    })
}

#[allow(clippy::too_many_arguments)]
fn route_backward_typed<'py, F: Accum + Element>(
    py: Python<'py>,
    grad_weights: &Bound<'py, PyAny>,
    grad_probs: Option<&Bound<'py, PyAny>>,
    probs: &Bound<'py, PyAny>,
    expert_ids: &Bound<'py, PyAny>,
    dest: &Bound<'py, PyAny>,
    score: ScoreFunction,
    normalize: Normalize,
    scale: f64,
) -> PyResult<Bound<'py, PyAny>> {
    let probs = input::<F>(probs, "plan.probs")?;
    expect_shape("plan.probs", probs.shape(), &[None, None])?;
    let (t, e) = (probs.shape()[0], probs.shape()[1]);
    let expert_ids = input::<i32>(expert_ids, "plan.expert_ids")?;
    expect_shape("plan.expert_ids", expert_ids.shape(), &[Some(t), None])?;
    let s = expert_ids.shape()[1];
    let dest = input::<i32>(dest, "plan.dest")?;
    expect_shape("plan.dest", dest.shape(), &[Some(t), Some(s)])?;
    let grad_weights = input::<F>(grad_weights, "grad_weights")?;
    expect_shape("grad_weights", grad_weights.shape(), &[Some(t), Some(s)])?;
    let graph = WeightsGraph {
        num_tokens: t,
        num_experts: e,
        slots: s,
        expert_ids: slice(&expert_ids, "plan.expert_ids")?,
        dest: slice(&dest, "plan.dest")?,
        probs: slice(&probs, "plan.probs")?,
        score,
        normalize,
        scale,
    };
    let grad_w = slice(&grad_weights, "grad_weights")?;
    let grad_probs = grad_probs.map(|g| input::<F>(g, "grad_probs")).transpose()?;
    if let Some(g) = &grad_probs {
        expect_shape("grad_probs", g.shape(), &[Some(t), Some(e)])?;
    }
    let grad_probs = grad_probs.as_ref().map(|g| slice(g, "grad_probs")).transpose()?;
    let out = output::<F>(py, &[t, e])?;
    let mut guard = out.readwrite();
    let grad_logits = output_slice(&mut guard)?;
    run_task_kernel(py, graph.num_tokens * graph.num_experts, || cpu::route_backward::route_backward(&graph, grad_w, grad_probs, grad_logits))?;
    drop(guard);
    Ok(out.into_any())
}

/// route_backward(grad_weights, grad_probs, probs, expert_ids, dest, score, normalize, scale,
/// double) -> grad_logits in the dtype of probs (float32 or float64); grad_probs may be None.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn route_backward<'py>(
    py: Python<'py>,
    grad_weights: &Bound<'py, PyAny>,
    grad_probs: Option<&Bound<'py, PyAny>>,
    probs: &Bound<'py, PyAny>,
    expert_ids: &Bound<'py, PyAny>,
    dest: &Bound<'py, PyAny>,
    score: &str,
    normalize: &str,
    scale: f64,
    double: bool,
) -> PyResult<Bound<'py, PyAny>> {
    let (score, normalize) = (ScoreFunction::parse(score)?, Normalize::parse(normalize)?);
    if double {
        route_backward_typed::<f64>(py, grad_weights, grad_probs, probs, expert_ids, dest, score, normalize, scale)
    } else {
        route_backward_typed::<f32>(py, grad_weights, grad_probs, probs, expert_ids, dest, score, normalize, scale)
    }
}

/// validate_plan(expert_ids, dest, src, expert_offsets, tokens_per_expert, assigned_per_expert,
/// capacity): raises PlanError / ShapeError for an inconsistent plan.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn validate_plan<'py>(
    py: Python<'py>,
    expert_ids: &Bound<'py, PyAny>,
    dest: &Bound<'py, PyAny>,
    src: &Bound<'py, PyAny>,
    expert_offsets: &Bound<'py, PyAny>,
    tokens_per_expert: &Bound<'py, PyAny>,
    assigned_per_expert: &Bound<'py, PyAny>,
    capacity: Option<usize>,
) -> PyResult<()> {
    let expert_ids = input::<i32>(expert_ids, "plan.expert_ids")?;
    expect_shape("plan.expert_ids", expert_ids.shape(), &[None, None])?;
    let (t, s) = (expert_ids.shape()[0], expert_ids.shape()[1]);
    let dest = input::<i32>(dest, "plan.dest")?;
    expect_shape("plan.dest", dest.shape(), &[Some(t), Some(s)])?;
    let src = input::<i32>(src, "plan.src")?;
    expect_shape("plan.src", src.shape(), &[None])?;
    let tokens_per_expert = input::<i64>(tokens_per_expert, "plan.tokens_per_expert")?;
    expect_shape("plan.tokens_per_expert", tokens_per_expert.shape(), &[None])?;
    let e = tokens_per_expert.shape()[0];
    let assigned = input::<i64>(assigned_per_expert, "plan.assigned_per_expert")?;
    expect_shape("plan.assigned_per_expert", assigned.shape(), &[Some(e)])?;
    let offsets = input::<i64>(expert_offsets, "plan.expert_offsets")?;
    expect_shape("plan.expert_offsets", offsets.shape(), &[Some(e + 1)])?;
    let arrays = PlanArrays {
        num_tokens: t,
        num_experts: e,
        slots: s,
        num_rows: src.shape()[0],
        expert_ids: slice(&expert_ids, "plan.expert_ids")?,
        dest: slice(&dest, "plan.dest")?,
        src: slice(&src, "plan.src")?,
        expert_offsets: slice(&offsets, "plan.expert_offsets")?,
        tokens_per_expert: slice(&tokens_per_expert, "plan.tokens_per_expert")?,
        assigned_per_expert: slice(&assigned, "plan.assigned_per_expert")?,
        capacity,
    };
    run_kernel(py, t * s + arrays.num_rows, || validate(&arrays))
}

/// plan_layout(num_tokens, num_experts, k, capacity, capacity_factor, min_capacity,
/// capacity_multiple, pad_to) -> (capacity or None, num_rows): the static shape of a route's plan.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn plan_layout(
    num_tokens: usize,
    num_experts: usize,
    k: usize,
    capacity: Option<usize>,
    capacity_factor: Option<f64>,
    min_capacity: usize,
    capacity_multiple: usize,
    pad_to: usize,
) -> PyResult<(Option<usize>, usize)> {
    let request = CapacityRequest { capacity, capacity_factor, min_capacity, capacity_multiple };
    let layout = resolve_capacity(&request, num_tokens, k, num_experts, pad_to)?;
    let rows = num_rows(layout, num_tokens, k, num_experts)?;
    Ok((match layout { Layout::Capacity(c) => Some(c), Layout::Dropless { .. } => None }, rows))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(plan_layout, m)?)?;
    m.add_function(wrap_pyfunction!(route, m)?)?;
    m.add_function(wrap_pyfunction!(expert_choice, m)?)?;
    m.add_function(wrap_pyfunction!(route_backward, m)?)?;
    m.add_function(wrap_pyfunction!(validate_plan, m)?)?;
    Ok(())
}
