// Token-choice gating: scores (softmax / sigmoid), selection bias, group-limited masking and top-k
// for 32 tokens per block, one thread per token, computed exactly as the CPU core does so that
// the routing decisions are bit-identical. With k = 0 it only writes the scores (expert choice),
// and, given probs_t, also their transpose ([E, T], for the per-expert selection). Both kernels
// also mark every row of src as padding (-1) for the plan kernels that follow.
#include "common.cuh"

// Independent partial maxima / sums, as in src/cpu/scores.rs.
#define SCORE_LANES 16
#define TOKENS_PER_BLOCK 32

// Scores one row in place; false for a row holding NaN or only -inf.
template <typename F>
__device__ bool score_row(F* row, int E, bool sigmoid) {
    F mx[SCORE_LANES];
    bool nan = false;
#pragma unroll
    for (int l = 0; l < SCORE_LANES; ++l) mx[l] = neg_inf<F>();
    const int blocks = E / SCORE_LANES * SCORE_LANES;
    for (int b = 0; b < blocks; b += SCORE_LANES) {
#pragma unroll
        for (int l = 0; l < SCORE_LANES; ++l) {
            F v = row[b + l];
            nan |= v != v;
            mx[l] = v > mx[l] ? v : mx[l];
        }
    }
#pragma unroll
    for (int l = 0; l < SCORE_LANES; ++l) {
        if (blocks + l < E) {
            F v = row[blocks + l];
            nan |= v != v;
            mx[l] = v > mx[l] ? v : mx[l];
        }
    }
    F m = neg_inf<F>();
#pragma unroll
    for (int l = 0; l < SCORE_LANES; ++l) m = mx[l] > m ? mx[l] : m;
    if (nan || m == neg_inf<F>()) return false;
    if (sigmoid) {
        for (int j = 0; j < E; ++j) row[j] = sigmoid_acc(row[j]);
    } else if (m == pos_inf<F>()) {
        int count = 0;
        for (int j = 0; j < E; ++j) count += row[j] == m;
        const F share = (F)1 / (F)count;
        for (int j = 0; j < E; ++j) row[j] = row[j] == m ? share : (F)0;
    } else {
        F acc[SCORE_LANES];
#pragma unroll
        for (int l = 0; l < SCORE_LANES; ++l) acc[l] = (F)0;
        for (int b = 0; b < blocks; b += SCORE_LANES) {
#pragma unroll
            for (int l = 0; l < SCORE_LANES; ++l) {
                F e = exp_acc(row[b + l] - m);
                row[b + l] = e;
                acc[l] += e;
            }
        }
#pragma unroll
        for (int l = 0; l < SCORE_LANES; ++l) {
            if (blocks + l < E) {
                F e = exp_acc(row[blocks + l] - m);
                row[blocks + l] = e;
                acc[l] += e;
            }
        }
        F sum = (F)0;
#pragma unroll
        for (int l = 0; l < SCORE_LANES; ++l) sum += acc[l];
        const F inverse = (F)1 / sum;
        for (int j = 0; j < E; ++j) row[j] = row[j] * inverse;
    }
    return true;
}

// The index of the best value ranked strictly after (pv, pi) in the order "higher value, then
// lower index"; -1 if none.
template <typename F>
__device__ __forceinline__ int next_best(const F* v, int n, F pv, int pi) {
    int bi = -1;
    F best = neg_inf<F>();
    for (int j = 0; j < n; ++j) {
        F x = v[j];
        bool after = x < pv || (x == pv && j > pi);
        if (after && (bi < 0 || x > best)) {
            best = x;
            bi = j;
        }
    }
    return bi;
}

// Top-k of a row into ids[0..k) (best first, ties to the lower index): k passes.
template <typename F>
__device__ void top_k_passes(const F* v, int n, int k, int* ids) {
    F pv = pos_inf<F>();
    int pi = -1;
    for (int s = 0; s < k; ++s) {
        int b = next_best(v, n, pv, pi);
        ids[s] = b;
        pv = v[b];
        pi = b;
    }
}

// Top-K for a compile-time K <= 8: one pass keeping a sorted list in registers.
template <int K, typename F>
__device__ void top_k_list(const F* v, int n, int* ids) {
    F tv[K];
    int ti[K];
#pragma unroll
    for (int i = 0; i < K; ++i) {
        tv[i] = neg_inf<F>();
        ti[i] = -1;
    }
    for (int j = 0; j < n; ++j) {
        F x = v[j];
        if (ti[K - 1] < 0 || x > tv[K - 1]) {
            tv[K - 1] = x;
            ti[K - 1] = j;
#pragma unroll
            for (int i = K - 1; i > 0; --i) {
                if (ti[i - 1] < 0 || tv[i] > tv[i - 1]) {
                    F a = tv[i]; tv[i] = tv[i - 1]; tv[i - 1] = a;
                    int b = ti[i]; ti[i] = ti[i - 1]; ti[i - 1] = b;
                }
            }
        }
    }
#pragma unroll
    for (int i = 0; i < K; ++i) ids[i] = ti[i];
}

template <typename F>
__device__ void top_k(const F* v, int n, int k, int* ids) {
    switch (k) {
        case 1: top_k_list<1>(v, n, ids); break;
        case 2: top_k_list<2>(v, n, ids); break;
        case 3: top_k_list<3>(v, n, ids); break;
        case 4: top_k_list<4>(v, n, ids); break;
        case 5: top_k_list<5>(v, n, ids); break;
        case 6: top_k_list<6>(v, n, ids); break;
        case 7: top_k_list<7>(v, n, ids); break;
        case 8: top_k_list<8>(v, n, ids); break;
        default: top_k_passes(v, n, k, ids);
    }
}

// Group-limited routing: keeps the topk_groups groups with the largest sum of their top
// per_group values (ties to the lower group) and sets every other value to -inf.
template <typename F>
__device__ void mask_groups(F* v, int E, int num_groups, int topk_groups, int per_group, F* gs) {
    const int size = E / num_groups;
    for (int g = 0; g < num_groups; ++g) {
        const F* members = v + g * size;
        F pv = pos_inf<F>(), sum = (F)0;
        int pi = -1;
        for (int p = 0; p < per_group; ++p) {
            int b = next_best(members, size, pv, pi);
            sum += members[b];
            pv = members[b];
            pi = b;
        }
        gs[g] = sum;
    }
    // Chosen groups are marked NaN (group scores are finite otherwise).
    for (int c = 0; c < topk_groups; ++c) {
        int bi = -1;
        F best = neg_inf<F>();
        for (int g = 0; g < num_groups; ++g) {
            F x = gs[g];
            if (x == x && (bi < 0 || x > best)) {
                best = x;
                bi = g;
            }
        }
        gs[bi] = __int_as_float(0x7FC00000);
    }
    for (int g = 0; g < num_groups; ++g) {
        if (gs[g] == gs[g]) {
            for (int j = g * size; j < (g + 1) * size; ++j) v[j] = neg_inf<F>();
        }
    }
}

// One block: TOKENS_PER_BLOCK tokens, one warp. Rows live in shared memory (stride E + 1, so the
// 32 threads' rows fall in different banks) or, when too large, in row_scratch ([T, E]).
template <typename L>
__device__ void gate(const L* logits, int T, int E, int k, int sigmoid, int normalize_topk,
                     const typename Elem<L>::Acc* bias, int num_groups, int topk_groups,
                     typename Elem<L>::Acc* probs, int* expert_ids, typename Elem<L>::Acc* weights,
                     typename Elem<L>::Acc* row_scratch, typename Elem<L>::Acc* group_scratch,
                     typename Elem<L>::Acc* probs_t, int* src, long long src_rows) {
    typedef typename Elem<L>::Acc F;
    fill_rows(src, src_rows);
    extern __shared__ __align__(16) unsigned char smem_raw[];
    const int lane = threadIdx.x;
    const long long t0 = (long long)blockIdx.x * TOKENS_PER_BLOCK;
    const int n_rows = (int)min((long long)TOKENS_PER_BLOCK, (long long)T - t0);
    F* rows;
    int stride;
    if (row_scratch != 0) {
        rows = row_scratch + t0 * E;
        stride = E;
    } else {
        rows = reinterpret_cast<F*>(smem_raw);
        stride = E + 1;
    }
    const long long count = (long long)n_rows * E;
    for (long long i = lane; i < count; i += 32) {
        int r = (int)(i / E), j = (int)(i % E);
        rows[(long long)r * stride + j] = Elem<L>::load(logits[t0 * E + i]);
    }
    __syncwarp();
    F* row = rows + (long long)lane * stride;
    const long long t = t0 + lane;
    bool ok = true;
    if (lane < n_rows) {
        ok = score_row(row, E, sigmoid != 0);
        if (!ok) {
            for (int j = 0; j < E; ++j) row[j] = __int_as_float(0x7FC00000);
        }
    }
    __syncwarp();
    for (long long i = lane; i < count; i += 32) {
        int r = (int)(i / E), j = (int)(i % E);
        probs[t0 * E + i] = rows[(long long)r * stride + j];
    }
    if (probs_t != 0) {
        for (int j = 0; j < E; ++j) {
            if (lane < n_rows) probs_t[(long long)j * T + t0 + lane] = rows[(long long)lane * stride + j];
        }
    }
    __syncwarp();
    if (k == 0 || lane >= n_rows) return;
    int* ids = expert_ids + t * k;
    F* w = weights + t * k;
    if (!ok) {
        for (int s = 0; s < k; ++s) {
            ids[s] = s;
            w[s] = row[0];
        }
        return;
    }
    if (bias != 0) {
        for (int j = 0; j < E; ++j) row[j] = row[j] + bias[j];
    }
    if (num_groups > 0) {
        int per_group = k / topk_groups;
        mask_groups(row, E, num_groups, topk_groups, per_group > 1 ? per_group : 1,
                    group_scratch + t * num_groups);
    }
    top_k(row, E, k, ids);
    const F* p = probs + t * E;
    F sum = (F)0;
    for (int s = 0; s < k; ++s) {
        F v = p[ids[s]];
        w[s] = v;
        sum += v;
    }
    if (normalize_topk && sum != (F)0) {
        for (int s = 0; s < k; ++s) w[s] = w[s] / sum;
    }
}

#define GATE(name, L)                                                                                  \
    extern "C" __global__ void __launch_bounds__(32) name(                                             \
        const L* logits, int T, int E, int k, int sigmoid, int normalize_topk,                         \
        const Elem<L>::Acc* bias, int num_groups, int topk_groups, Elem<L>::Acc* probs,                \
        int* expert_ids, Elem<L>::Acc* weights, Elem<L>::Acc* row_scratch,                             \
        Elem<L>::Acc* group_scratch, Elem<L>::Acc* probs_t, int* src, long long rows) {                \
        gate<L>(logits, T, E, k, sigmoid, normalize_topk, bias, num_groups, topk_groups, probs,        \
                expert_ids, weights, row_scratch, group_scratch, probs_t, src, rows);                      \
    }
GATE(gate_f32, float)
GATE(gate_f64, double)
GATE(gate_f16, f16)
GATE(gate_bf16, bf16)
