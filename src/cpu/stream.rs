//! Streaming (non-temporal) row stores for outputs much larger than the cache: they skip the read
//! of each destination line that an ordinary store costs, which halves a gather's write traffic.

/// Outputs of at least this many bytes are written with streaming stores. Smaller ones stay in
/// the cache for the op that reads them next, which ordinary stores serve better.
pub const STREAM_MIN_BYTES: usize = 16 << 20;

/// Whether an output of `bytes` bytes should be written with streaming stores.
#[inline]
pub fn worth_streaming(bytes: usize) -> bool {
    bytes >= STREAM_MIN_BYTES
}

/// Copies `src` into `dst` (equal lengths). With `streaming`, the 16-byte-aligned body of `dst`
/// is written with non-temporal stores; the caller must call `fence` before the rows are read
/// by another thread (e.g. at the end of its parallel task).
#[inline(always)]
pub fn copy_row<A: Copy>(dst: &mut [A], src: &[A], streaming: bool) {
    assert_eq!(dst.len(), src.len(), "copy_row: lengths differ");
    #[cfg(target_arch = "x86_64")]
    if streaming {
        let bytes = std::mem::size_of_val(dst);
        // SAFETY: dst and src are valid for `bytes` bytes (equal lengths of the same type,
        // asserted above), do not overlap (dst is borrowed mutably), and A is Copy, so a bytewise
        // copy is a valid copy of every element.
        unsafe { stream_bytes(dst.as_mut_ptr().cast::<u8>(), src.as_ptr().cast::<u8>(), bytes) };
        return;
    }
    let _ = streaming;
    dst.copy_from_slice(src);
}

/// Where to write an output row: `out` itself, or when streaming, `staged` (a row buffer that
/// stays in L1) which `flush_row` then copies to `out` with streaming stores. (A plain function,
/// not a callback: a closure body may be compiled without the caller's AVX2.)
#[inline(always)]
pub fn row_target<'a, A>(out: &'a mut [A], staged: &'a mut [A], streaming: bool) -> &'a mut [A] {
    if streaming {
        staged
    } else {
        out
    }
}

/// Completes a row written to `row_target`: streams `staged` to `out` when streaming.
#[inline(always)]
pub fn flush_row<A: Copy>(out: &mut [A], staged: &[A], streaming: bool) {
    if streaming {
        copy_row(out, staged, true);
    }
}

/// Orders this thread's streaming stores before anything it does next (a no-op elsewhere).
#[inline]
pub fn fence(streaming: bool) {
    #[cfg(target_arch = "x86_64")]
    if streaming {
        // SAFETY: sfence has no preconditions; SSE is part of the x86_64 baseline.
        unsafe { std::arch::x86_64::_mm_sfence() };
    }
    let _ = streaming;
}

/// Asks the CPU to start loading `row` into the cache (every 64-byte line of it) without
/// waiting: a gather touches each source row once, at an address the hardware prefetcher cannot
/// guess, so it pays a memory round trip per row unless the row is requested a few rows ahead.
#[inline(always)]
pub fn prefetch_row<A>(row: &[A]) {
    #[cfg(target_arch = "x86_64")]
    {
        let (start, bytes) = (row.as_ptr().cast::<i8>(), std::mem::size_of_val(row));
        let mut offset = 0;
        while offset < bytes {
            // SAFETY: prefetch is a hint that never faults, and start + offset stays inside `row`.
            unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(start.add(offset)) };
            offset += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = row;
}

/// Prefetches the rows `dest` names (skipping -1) of `rows` ([_, hidden]): the rows of a token a
/// combine-like kernel reaches next.
#[inline(always)]
pub fn prefetch_rows<A>(rows: &[A], hidden: usize, dest: &[i32]) {
    for &d in dest {
        if d >= 0 {
            prefetch_row(&rows[d as usize * hidden..(d as usize + 1) * hidden]);
        }
    }
}

/// Copies `bytes` bytes from `src` to `dst`: an unaligned head and tail with ordinary stores and
/// the 16-byte-aligned body with `movntdq`, four stores (one cache line) per iteration.
///
/// # Safety
/// `dst` and `src` must be valid for `bytes` bytes of writes and reads and must not overlap.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn stream_bytes(dst: *mut u8, src: *const u8, bytes: usize) {
    use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_stream_si128};
    let head = dst.align_offset(16).min(bytes);
    // SAFETY (whole body): every offset below stays within [0, bytes), which the caller
    // guarantees valid for both pointers; stream destinations are 16-byte aligned by `head`.
    unsafe {
        std::ptr::copy_nonoverlapping(src, dst, head);
        let body = (bytes - head) / 16;
        let (mut d, mut s) = (dst.add(head).cast::<__m128i>(), src.add(head).cast::<__m128i>());
        let mut left = body;
        while left >= 4 {
            let (a, b, c, e) = (_mm_loadu_si128(s), _mm_loadu_si128(s.add(1)), _mm_loadu_si128(s.add(2)), _mm_loadu_si128(s.add(3)));
            _mm_stream_si128(d, a);
            _mm_stream_si128(d.add(1), b);
            _mm_stream_si128(d.add(2), c);
            _mm_stream_si128(d.add(3), e);
            d = d.add(4);
            s = s.add(4);
            left -= 4;
        }
        for _ in 0..left {
            _mm_stream_si128(d, _mm_loadu_si128(s));
            d = d.add(1);
            s = s.add(1);
        }
        let done = head + body * 16;
        std::ptr::copy_nonoverlapping(src.add(done), dst.add(done), bytes - done);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_every_length_and_alignment() {
        let src: Vec<u8> = (0..300u32).map(|i| (i * 7 + 3) as u8).collect();
        for offset in 0..17 {
            for len in [0, 1, 15, 16, 17, 63, 64, 65, 130, 283 - offset] {
                let mut dst = vec![0u8; 300];
                copy_row(&mut dst[offset..offset + len], &src[..len], true);
                fence(true);
                assert_eq!(&dst[offset..offset + len], &src[..len], "offset {offset} len {len}");
                assert!(dst[..offset].iter().all(|&b| b == 0));
                assert!(dst[offset + len..].iter().all(|&b| b == 0));
            }
        }
    }

    #[test]
    fn copies_wider_elements() {
        let src: Vec<f32> = (0..37).map(|i| i as f32 * 0.5).collect();
        let mut dst = vec![0f32; 37];
        copy_row(&mut dst, &src, true);
        fence(true);
        assert_eq!(dst, src);
    }
}
