//! Bindings of regroup (expert parallelism's reordering of received rows) on NumPy arrays and on
//! CUDA device pointers. The counts are copied (`index_snapshot`) before the GIL is released.

use numpy::{PyArrayMethods, PyUntypedArrayMethods};
use pyo3::prelude::*;

use super::arrays::{expect_shape, index_snapshot, input, output, output_slice, slice, with_activation, Stored};
use super::errors::run_task_kernel;
use crate::cpu;
use crate::cuda::regroup::{regroup_workspace, Blocks};
use crate::cuda::{self, Rows};
use crate::dtype::DType;

/// regroup(rows, dtype, counts) -> out: rows ([N, H]) in blocks of counts ([A, B] int64, summing
/// to N) in a-major order, returned in b-major order.
#[pyfunction]
fn regroup<'py>(py: Python<'py>, rows: &Bound<'py, PyAny>, dtype_name: &str, counts: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    with_activation!(DType::parse_arg(dtype_name, "rows")?, A => {
        let x = input::<<A as Stored>::Storage>(rows, "rows")?;
        let counts = input::<i64>(counts, "counts")?;
        expect_shape("rows", x.shape(), &[None, None])?;
        expect_shape("counts", counts.shape(), &[None, None])?;
        let (n, h) = (x.shape()[0], x.shape()[1]);
        let (a, b) = (counts.shape()[0], counts.shape()[1]);
        let counts = index_snapshot(&counts, "counts")?;
        let x = A::view(slice(&x, "rows")?);
        let out = output::<<A as Stored>::Storage>(py, &[n, h])?;
        let mut guard = out.readwrite();
        let y = A::view_mut(output_slice(&mut guard)?);
        run_task_kernel(py, n * h, || cpu::regroup::regroup(x, n, h, &counts, a, b, y))?;
        drop(guard);
        Ok(out.into_any())
    })
}

/// Bytes of scratch memory a CUDA regroup of an [a_blocks, b_blocks] grid needs.
#[pyfunction]
fn cuda_regroup_workspace(a_blocks: usize, b_blocks: usize) -> usize {
    regroup_workspace(a_blocks, b_blocks)
}

/// out ([rows, hidden]) = x regrouped from a-major to b-major blocks of counts ([a, b] int64).
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn cuda_regroup(device: i32, stream: u64, dtype_name: &str, x: u64, rows: usize, hidden: usize, counts: u64, a_blocks: usize,
                b_blocks: usize, workspace: u64, out: u64) -> PyResult<()> {
    let dtype = DType::parse_arg(dtype_name, "rows")?;
    let blocks = Blocks { counts, a_blocks, b_blocks, workspace };
    cuda::regroup::regroup(cuda::device(device)?, stream, dtype, Rows { ptr: x, rows }, hidden, blocks, Rows { ptr: out, rows })?;
    Ok(())
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(regroup, m)?)?;
    m.add_function(wrap_pyfunction!(cuda_regroup_workspace, m)?)?;
    m.add_function(wrap_pyfunction!(cuda_regroup, m)?)?;
    Ok(())
}
