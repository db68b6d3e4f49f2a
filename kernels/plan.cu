// Plan construction for token choice, deterministic (no result depends on atomic ordering): picks
// are ranked per expert in chunks of CHUNK positions (count per chunk, scan over chunks, rank
// inside the chunk with warp matching), in token order or slot-major order; capacity by priority;
// segment offsets; the final weights.
#include "common.cuh"
#include "select.cuh"

#define CHUNK 256

enum RankMode { RANK_ROWS = 0, RANK_ROWS_CAPPED = 1, RANK_FLAGS = 2, RANK_ORDER = 3 };

// The pick (token * k + slot) at position j of the order: token-major, or slot-major.
__device__ __forceinline__ int pick_at(int j, int T, int k, int slot_major) {
    return slot_major ? (j % T) * k + j / T : j;
}

// The expert of the pick at position j, or -1 when the pick is excluded (or out of range).
__device__ __forceinline__ int expert_at(const int* ids, const unsigned char* only, int pick, int E) {
    if (only != 0 && !only[pick]) return -1;
    int e = ids[pick];
    return (e >= 0 && e < E) ? e : -1;
}

extern "C" __global__ void fill_i32(int* out, long long n, int value) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        out[i] = value;
}

// counts[e * chunks + c]: picks of expert e among positions [c * CHUNK, (c + 1) * CHUNK) (one
// block per chunk; expert-major so that each expert's scan reads contiguous memory).
extern "C" __global__ void count_chunks(const int* ids, const unsigned char* only, int P, int T, int k, int E,
                                        int slot_major, int* counts, int* done) {
    extern __shared__ int hist[];
    if (done != 0 && blockIdx.x == 0 && threadIdx.x == 0) *done = 0;  // for scan_chunks' last block
    for (int e = threadIdx.x; e < E; e += blockDim.x) hist[e] = 0;
    __syncthreads();
    const int j0 = blockIdx.x * CHUNK, j1 = min(j0 + CHUNK, P);
    for (int j = j0 + threadIdx.x; j < j1; j += blockDim.x) {
        int e = expert_at(ids, only, pick_at(j, T, k, slot_major), E);
        if (e >= 0) atomicAdd(&hist[e], 1);
    }
    __syncthreads();
    for (int e = threadIdx.x; e < E; e += blockDim.x) counts[(long long)e * gridDim.x + blockIdx.x] = hist[e];
}

// One block: segment starts from per-expert totals. capacity >= 0: E segments of capacity rows
// (tokens = min(total, capacity)); else dropless with segments rounded up to pad_to. The int64
// outputs may be null.
__device__ void segment_offsets_block(const int* totals, int E, int pad_to, int capacity, int* seg_start,
                                      i64* offsets, i64* tokens, i64* assigned) {
    long long carry = 0;
    for (int base = 0; base < E; base += blockDim.x) {
        const int e = base + threadIdx.x;
        const int n = e < E ? __ldcg(totals + e) : 0;  // (written by other blocks: skip L1)
        const int size = capacity >= 0 ? capacity : (n + pad_to - 1) / pad_to * pad_to;
        int total;
        const int before = block_exclusive_scan(e < E ? size : 0, &total);
        if (e < E) {
            const long long start = carry + before;
            seg_start[e] = (int)start;
            if (offsets) offsets[e] = start;
            if (tokens) tokens[e] = capacity >= 0 ? min(n, capacity) : n;
            if (assigned) assigned[e] = n;
        }
        carry += total;
    }
    if (threadIdx.x == 0 && offsets) offsets[E] = carry;
}

extern "C" __global__ void segment_offsets(const int* totals, int E, int pad_to, int capacity, int* seg_start,
                                           i64* offsets, i64* tokens, i64* assigned) {
    segment_offsets_block(totals, E, pad_to, capacity, seg_start, offsets, tokens, assigned);
}

// One block per expert: counts become exclusive prefixes over the chunks; totals[e] the sum. With
// `done` (zeroed by count_chunks), the last block to finish also computes the segment offsets
// (segment_offsets_block) from all the totals.
extern "C" __global__ void scan_chunks(int* counts, int chunks, int E, int* totals, int* done, int pad_to,
                                       int capacity, int* seg_start, i64* offsets, i64* tokens, i64* assigned) {
    const int e = blockIdx.x;
    const int per = (chunks + blockDim.x - 1) / blockDim.x;
    const int c0 = threadIdx.x * per, c1 = min(c0 + per, chunks);
    int local = 0;
    int* column = counts + (long long)e * chunks;
    for (int c = c0; c < c1; ++c) local += column[c];
    int total;
    int running = block_exclusive_scan(local, &total);
    for (int c = c0; c < c1; ++c) {
        const int v = column[c];
        column[c] = running;
        running += v;
    }
    if (threadIdx.x == 0) totals[e] = total;
    if (done == 0) return;
    __shared__ bool last;
    if (threadIdx.x == 0) {
        __threadfence();  // this block's total is visible before its ticket is
        last = atomicAdd(done, 1) == (int)gridDim.x - 1;
    }
    __syncthreads();
    if (!last) return;
    __threadfence();
    segment_offsets_block(totals, E, pad_to, capacity, seg_start, offsets, tokens, assigned);
}

// One warp per chunk: each pick's rank among the earlier picks of its expert (in the chosen
// order), then per mode: RANK_ROWS: dest = seg_start[e] + rank; RANK_ROWS_CAPPED: the same if
// rank < capacity, else dropped; RANK_FLAGS: flags[pick] = rank < capacity; RANK_ORDER:
// order[seg_start[e] + rank] = pick. src[dest] = token for every row written.
extern "C" __global__ void __launch_bounds__(32) rank_chunks(
    const int* ids, const unsigned char* only, int P, int T, int k, int E, int slot_major,
    const int* prefix, const int* seg_start, int mode, int capacity, int* dest, int* src,
    unsigned char* flags, int* order) {
    extern __shared__ int running[];
    const int lane = threadIdx.x;
    for (int e = lane; e < E; e += 32) running[e] = prefix[(long long)e * gridDim.x + blockIdx.x];
    __syncwarp();
    const int j0 = blockIdx.x * CHUNK, j1 = min(j0 + CHUNK, P);
    for (int base = j0; base < j1; base += 32) {
        const int j = base + lane;
        const bool active = j < j1;
        const int pick = active ? pick_at(j, T, k, slot_major) : 0;
        const int e = active ? expert_at(ids, only, pick, E) : -1;
        const unsigned mask = __match_any_sync(0xFFFFFFFFu, e);
        int rank = 0;
        if (e >= 0) rank = running[e] + __popc(mask & ((1u << lane) - 1u));
        __syncwarp();
        if (e >= 0 && lane == 31 - __clz(mask)) running[e] += __popc(mask);
        __syncwarp();
        if (!active) continue;
        if (mode == RANK_FLAGS) {
            flags[pick] = e >= 0 && rank < capacity;
        } else if (mode == RANK_ORDER) {
            if (e >= 0) order[seg_start[e] + rank] = pick;
        } else {
            const bool kept = e >= 0 && (mode == RANK_ROWS || rank < capacity);
            const int row = kept ? seg_start[e] + rank : -1;
            dest[pick] = row;
            if (kept) src[row] = pick / k;
        }
    }
}

// "score" priority: one block per expert over its picks in token order (order[seg_start[e] ..]),
// keeping the capacity picks of highest key (pre-capacity weight), ties to (token, slot).
template <typename F>
__device__ void keep_by_score(const int* order, const int* seg_start, const int* totals, const F* keys, int k,
                              int capacity, int* dest, int* src) {
    const int e = blockIdx.x;
    const int n = totals[e];
    const int* picks = order + seg_start[e];
    auto key = [&](int i) { return order_key(keys[picks[i]]); };
    auto emit = [&](int i, bool taken, int rank) {
        const int pick = picks[i];
        if (taken) {
            const int row = e * capacity + rank;
            dest[pick] = row;
            src[row] = pick / k;
        } else {
            dest[pick] = -1;
        }
    };
    select_largest(n, capacity, (int)sizeof(F) * 8, key, emit);
}

extern "C" __global__ void keep_by_score_f32(const int* order, const int* seg_start, const int* totals,
                                             const float* keys, int k, int capacity, int* dest, int* src) {
    keep_by_score<float>(order, seg_start, totals, keys, k, capacity, dest, src);
}
extern "C" __global__ void keep_by_score_f64(const int* order, const int* seg_start, const int* totals,
                                             const double* keys, int k, int capacity, int* dest, int* src) {
    keep_by_score<double>(order, seg_start, totals, keys, k, capacity, dest, src);
}

// Final weights, one thread per token: dropped picks get 0, then "kept" normalization, then scale.
template <typename F>
__device__ void finalize_weights(F* weights, const int* dest, int T, int k, int normalize_kept, F scale,
                                 int apply_scale) {
    const long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= T) return;
    F* w = weights + t * k;
    const int* d = dest + t * k;
    F sum = (F)0;
    for (int s = 0; s < k; ++s) {
        const F v = d[s] >= 0 ? w[s] : (F)0;
        w[s] = v;
        sum += v;
    }
    if (normalize_kept && sum != (F)0) {
        for (int s = 0; s < k; ++s) w[s] = w[s] / sum;
    }
    if (apply_scale) {
        for (int s = 0; s < k; ++s) w[s] = w[s] * scale;
    }
}

extern "C" __global__ void finalize_weights_f32(float* weights, const int* dest, int T, int k, int normalize_kept,
                                                float scale, int apply_scale) {
    finalize_weights<float>(weights, dest, T, k, normalize_kept, scale, apply_scale);
}
extern "C" __global__ void finalize_weights_f64(double* weights, const int* dest, int T, int k, int normalize_kept,
                                                double scale, int apply_scale) {
    finalize_weights<double>(weights, dest, T, k, normalize_kept, scale, apply_scale);
}
