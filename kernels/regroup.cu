// Regroup: rows held as a grid of blocks (block (a, b) has counts[a * B + b] rows), reordered
// from a-major to b-major: an expert-parallel all-to-all's received rows, source-rank-major, into
// local-expert-major segments (with the counts transposed, the way back).
#include "common.cuh"

// One thread: in_starts[a * B + b] = the first input row of block (a, b) (a-major order) and
// out_starts[b * A + a] = its first output row (b-major order), out_starts[A * B] = the total.
extern "C" __global__ void regroup_starts(const i64* __restrict__ counts, int A, int B, i64* in_starts, i64* out_starts) {
    if (blockIdx.x != 0 || threadIdx.x != 0) return;
    i64 next = 0;
    for (int i = 0; i < A * B; ++i) {
        in_starts[i] = next;
        const i64 c = counts[i];
        next += c > 0 ? c : 0;
    }
    next = 0;
    for (int b = 0; b < B; ++b) {
        for (int a = 0; a < A; ++a) {
            out_starts[b * A + a] = next;
            const i64 c = counts[a * B + b];
            next += c > 0 ? c : 0;
        }
    }
    out_starts[A * B] = next;
}

// One CUDA block per output row r: the last block j (b-major) starting at or before r holds it;
// its input row is in_starts[a * B + b] + (r - out_starts[j]). Output rows past the blocks' total,
// and source rows outside [0, rows) (counts that do not sum to the rows, unchecked on the device),
// give zero rows.
template <typename W>
__device__ void regroup_rows(const W* __restrict__ x, W* __restrict__ out, const i64* __restrict__ in_starts,
                             const i64* __restrict__ out_starts, int A, int B, long long rows, long long width) {
    const long long r = blockIdx.x;
    int lo = 0, hi = A * B;  // the first j in [0, A * B] with out_starts[j] > r, minus one
    while (lo < hi) {
        const int mid = (lo + hi) / 2;
        if (out_starts[mid] <= r) lo = mid + 1; else hi = mid;
    }
    const int j = lo - 1;
    long long source = -1;
    if (j >= 0 && j < A * B && r < out_starts[A * B]) {  // (rows past the blocks' total: zero rows)
        const int b = j / A, a = j % A;
        source = in_starts[a * B + b] + (r - out_starts[j]);
    }
    W* row = out + r * width;
    if (source < 0 || source >= rows) {
        W zero;
        memset(&zero, 0, sizeof(W));
        for (long long i = threadIdx.x; i < width; i += blockDim.x) row[i] = zero;
        return;
    }
    const W* in = x + source * width;
    for (long long i = threadIdx.x; i < width; i += blockDim.x) row[i] = in[i];
}

#define REGROUP(name, W)                                                                                    \
    extern "C" __global__ void name(const W* x, W* out, const i64* in_starts, const i64* out_starts, int A, \
                                    int B, long long rows, long long width) {                                \
        regroup_rows<W>(x, out, in_starts, out_starts, A, B, rows, width);                                   \
    }
REGROUP(regroup_rows_b16, uint4)
REGROUP(regroup_rows_b8, uint2)
REGROUP(regroup_rows_b4, unsigned int)
REGROUP(regroup_rows_b2, unsigned short)
