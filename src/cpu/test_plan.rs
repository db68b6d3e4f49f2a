//! Test helper: a random plan's dest / src arrays, with dropped slots and padding rows.

/// (dest [tokens, slots], src [rows]) of a plan whose kept slots are a random one-to-one map onto
/// rows: about 1 slot in 8 dropped and 1 row in 8 left as padding. Deterministic in `seed`.
pub fn random_plan(tokens: usize, slots: usize, seed: u64) -> (Vec<i32>, Vec<i32>) {
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let mut next = move |bound: usize| {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((state >> 33) as usize) % bound.max(1)
    };
    let rows = tokens * slots;
    let mut order: Vec<usize> = (0..rows).collect();
    for i in (1..rows).rev() {
        order.swap(i, next(i + 1));
    }
    let mut dest = vec![-1i32; rows];
    let mut src = vec![-1i32; rows];
    for (pair, &row) in order.iter().enumerate() {
        if next(8) != 0 {
            dest[pair] = row as i32;
            src[row] = (pair / slots) as i32;
        }
    }
    (dest, src)
}

/// Deterministic test values in [-1, 1).
pub fn values(len: usize, seed: u64) -> Vec<f32> {
    (0..len).map(|i| ((i as u64 * 2654435761 + seed * 97) % 2000) as f32 / 1000.0 - 1.0).collect()
}
