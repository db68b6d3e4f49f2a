//! Bindings of permute, combine and their backward passes. The plan's index arrays are copied
//! (`index_snapshot`) before the GIL is released: the kernels check and use the copies, which no
//! other thread can change mid-call.

use numpy::{PyArrayMethods, PyUntypedArrayMethods};
use pyo3::prelude::*;

use super::arrays::{expect_shape, index_snapshot, input, output_slice, slice, with_activation, output, Stored};
use super::errors::run_task_kernel;
use crate::cpu;
use crate::dtype::{Activation, DType};

/// permute(x, dtype, src) -> xp: xp[r] = x[src[r]], padding rows (src = -1) zero.
#[pyfunction]
fn permute<'py>(py: Python<'py>, x: &Bound<'py, PyAny>, dtype_name: &str, src: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    with_activation!(DType::parse_arg(dtype_name, "x")?, A => {
        let x = input::<<A as Stored>::Storage>(x, "x")?;
        let src = input::<i32>(src, "plan.src")?;
        expect_shape("x", x.shape(), &[None, None])?;
        expect_shape("plan.src", src.shape(), &[None])?;
        let (t, h, r) = (x.shape()[0], x.shape()[1], src.shape()[0]);
        let src = index_snapshot(&src, "plan.src")?;
        let x = A::view(slice(&x, "x")?);
        let out = output::<<A as Stored>::Storage>(py, &[r, h])?;
        let mut guard = out.readwrite();
        let xp = A::view_mut(output_slice(&mut guard)?);
        run_task_kernel(py, r * h, || cpu::permute::permute(x, t, h, &src, <A as Activation>::ZERO, xp))?;
        drop(guard);
        Ok(out.into_any())
    })
}

/// Shared by combine and permute_backward: y[t] = Σ_s w[t,s] · Σ_j sources[j][dest[t,s]].
fn gather_sum<'py>(
    py: Python<'py>,
    sources: &[Bound<'py, PyAny>],
    rows_arg: &'static str,
    dtype_name: &str,
    dest: &Bound<'py, PyAny>,
    weights: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    with_activation!(DType::parse_arg(dtype_name, rows_arg)?, A => {
        let arrays = sources.iter().map(|s| input::<<A as Stored>::Storage>(s, rows_arg)).collect::<PyResult<Vec<_>>>()?;
        let dest = input::<i32>(dest, "plan.dest")?;
        expect_shape(rows_arg, arrays[0].shape(), &[None, None])?;
        expect_shape("plan.dest", dest.shape(), &[None, None])?;
        let (r, h) = (arrays[0].shape()[0], arrays[0].shape()[1]);
        for a in &arrays[1..] {
            expect_shape(rows_arg, a.shape(), &[Some(r), Some(h)])?;
        }
        let (t, s) = (dest.shape()[0], dest.shape()[1]);
        let weights = weights.map(|w| input::<<A as Activation>::Acc>(w, "weights")).transpose()?;
        if let Some(w) = &weights {
            expect_shape("weights", w.shape(), &[Some(t), Some(s)])?;
        }
        let weights = weights.as_ref().map(|w| slice(w, "weights")).transpose()?;
        let rows = arrays.iter().map(|a| slice(a, rows_arg).map(A::view)).collect::<PyResult<Vec<_>>>()?;
        let dest = index_snapshot(&dest, "plan.dest")?;
        let out = output::<<A as Stored>::Storage>(py, &[t, h])?;
        let mut guard = out.readwrite();
        let y = A::view_mut(output_slice(&mut guard)?);
        run_task_kernel(py, (rows.len() * r + t) * h, || cpu::combine::combine(&rows, r, h, &dest, s, weights, y))?;
        drop(guard);
        Ok(out.into_any())
    })
}

/// combine(yp, dtype, dest, weights) -> y.
#[pyfunction]
fn combine<'py>(
    py: Python<'py>,
    yp: &Bound<'py, PyAny>,
    dtype_name: &str,
    dest: &Bound<'py, PyAny>,
    weights: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    gather_sum(py, std::slice::from_ref(yp), "yp", dtype_name, dest, Some(weights))
}

/// permute_backward(grad_xp, dtype, dest, *more_grad_xp) -> grad_x. Extra arrays (each shaped
/// like grad_xp) are gradients of other uses of the same permuted rows, summed with it.
#[pyfunction]
#[pyo3(signature = (grad_xp, dtype_name, dest, *more_grad_xp))]
fn permute_backward<'py>(
    py: Python<'py>,
    grad_xp: &Bound<'py, PyAny>,
    dtype_name: &str,
    dest: &Bound<'py, PyAny>,
    more_grad_xp: Vec<Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let mut sources = Vec::with_capacity(1 + more_grad_xp.len());
    sources.push(grad_xp.clone());
    sources.extend(more_grad_xp);
    gather_sum(py, &sources, "grad_xp", dtype_name, dest, None)
}

/// combine_backward(grad_y, yp, dtype, dest, src, weights) -> (grad_yp, grad_weights).
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn combine_backward<'py>(
    py: Python<'py>,
    grad_y: &Bound<'py, PyAny>,
    yp: &Bound<'py, PyAny>,
    dtype_name: &str,
    dest: &Bound<'py, PyAny>,
    src: &Bound<'py, PyAny>,
    weights: &Bound<'py, PyAny>,
) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyAny>)> {
    with_activation!(DType::parse_arg(dtype_name, "yp")?, A => {
        let grad_y = input::<<A as Stored>::Storage>(grad_y, "grad_y")?;
        let yp = input::<<A as Stored>::Storage>(yp, "yp")?;
        let dest = input::<i32>(dest, "plan.dest")?;
        let src = input::<i32>(src, "plan.src")?;
        let weights = input::<<A as Activation>::Acc>(weights, "weights")?;
        expect_shape("plan.dest", dest.shape(), &[None, None])?;
        let (t, s) = (dest.shape()[0], dest.shape()[1]);
        expect_shape("plan.src", src.shape(), &[None])?;
        let r = src.shape()[0];
        expect_shape("grad_y", grad_y.shape(), &[Some(t), None])?;
        let h = grad_y.shape()[1];
        expect_shape("yp", yp.shape(), &[Some(r), Some(h)])?;
        expect_shape("weights", weights.shape(), &[Some(t), Some(s)])?;
        let (grad_y, yp) = (A::view(slice(&grad_y, "grad_y")?), A::view(slice(&yp, "yp")?));
        let (dest, src) = (index_snapshot(&dest, "plan.dest")?, index_snapshot(&src, "plan.src")?);
        let weights = slice(&weights, "weights")?;
        let grad_yp_out = output::<<A as Stored>::Storage>(py, &[r, h])?;
        let grad_w_out = output::<<A as Activation>::Acc>(py, &[t, s])?;
        let mut yp_guard = grad_yp_out.readwrite();
        let mut w_guard = grad_w_out.readwrite();
        let grad_yp = A::view_mut(output_slice(&mut yp_guard)?);
        let grad_w = output_slice(&mut w_guard)?;
        run_task_kernel(py, (2 * r + t) * h, || {
            cpu::combine_backward::combine_backward(grad_y, yp, t, h, &dest, &src, s, weights, grad_yp, grad_w)
        })?;
        drop((yp_guard, w_guard));
        Ok((grad_yp_out.into_any(), grad_w_out.into_any()))
    })
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(permute, m)?)?;
    m.add_function(wrap_pyfunction!(combine, m)?)?;
    m.add_function(wrap_pyfunction!(permute_backward, m)?)?;
    m.add_function(wrap_pyfunction!(combine_backward, m)?)?;
    Ok(())
}
