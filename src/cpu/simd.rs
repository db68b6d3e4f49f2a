//! Runtime dispatch to AVX2 code: a kernel body is compiled twice (baseline x86-64 and AVX2) and
//! the wider one runs where the CPU has it. Both run the same IEEE operations in the same order
//! (no FMA contraction), so they give the same bits.

/// A unit of kernel work; `run` is `#[inline(always)]` so it is compiled into each variant.
pub trait Body {
    type Output;
    fn run(self) -> Self::Output;
}

/// Runs `body`, compiled for AVX2 when the CPU supports it.
#[inline]
pub fn dispatch<B: Body>(body: B) -> B::Output {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, checked just above.
        return unsafe { run_avx2(body) };
    }
    body.run()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn run_avx2<B: Body>(body: B) -> B::Output {
    body.run()
}
