// Token-choice gating for the common case (no group limit, k <= 8, E <= 256, float32 scores) with 16 lanes per
// token: lane l holds columns l, l + 16, ..., which are exactly the CPU core's 16 partial maxima
// and sums (added in the same order), so the scores and decisions are bit-identical; each lane
// keeps its best k columns (a list of 2 or 8) and the k picks are merged across the 16 lanes.
#include "common.cuh"

#define LANES 16

// The better of two candidates: higher value, then lower index.
template <typename F>
__device__ __forceinline__ bool better(F av, int ai, F bv, int bi) {
    return av > bv || (av == bv && ai < bi);
}

// N columns per lane (E <= 16 N); each lane keeps its best LIST >= k columns.
template <typename L, int N, int LIST>
__device__ void gate_lanes(const L* logits, int T, int E, int k, int sigmoid, int normalize_topk,
                           const typename Elem<L>::Acc* bias, typename Elem<L>::Acc* probs, int* expert_ids,
                           typename Elem<L>::Acc* weights, int* src, long long rows) {
    typedef typename Elem<L>::Acc F;
    fill_rows(src, rows);
    const int lane = threadIdx.x & (LANES - 1);
    const long long t = (long long)blockIdx.x * (blockDim.x / LANES) + threadIdx.x / LANES;
    // The 16 lanes of this token (a half warp); a token past T leaves with its whole half.
    const unsigned mask = 0xFFFFu << (threadIdx.x & 16);
    if (t >= T) return;
    const L* row = logits + t * E;
    F v[N];
    F mx = neg_inf<F>();
    bool nan = false;
#pragma unroll
    for (int i = 0; i < N; ++i) {
        const int j = lane + LANES * i;
        v[i] = j < E ? Elem<L>::load(row[j]) : neg_inf<F>();
        nan |= v[i] != v[i];
        mx = v[i] > mx ? v[i] : mx;
    }
#pragma unroll
    for (int o = LANES / 2; o > 0; o >>= 1) {
        const F other = __shfl_xor_sync(mask, mx, o, LANES);
        mx = other > mx ? other : mx;
    }
    const bool bad = __any_sync(mask, nan) || mx == neg_inf<F>();
    F* p_row = probs + t * E;
    if (bad) {
        const F qnan = __int_as_float(0x7FC00000);
#pragma unroll
        for (int i = 0; i < N; ++i)
            if (lane + LANES * i < E) p_row[lane + LANES * i] = qnan;
        if (lane < k) {
            expert_ids[t * k + lane] = lane;
            weights[t * k + lane] = qnan;
        }
        return;
    }
    if (sigmoid) {
#pragma unroll
        for (int i = 0; i < N; ++i) v[i] = sigmoid_acc(v[i]);
    } else if (mx == pos_inf<F>()) {
        int count = 0;
#pragma unroll
        for (int i = 0; i < N; ++i) count += v[i] == mx;
#pragma unroll
        for (int o = LANES / 2; o > 0; o >>= 1) count += __shfl_xor_sync(mask, count, o, LANES);
        const F share = (F)1 / (F)count;
#pragma unroll
        for (int i = 0; i < N; ++i) v[i] = v[i] == mx ? share : (F)0;
    } else {
        F acc = (F)0;
#pragma unroll
        for (int i = 0; i < N; ++i) {
            if (lane + LANES * i < E) {
                v[i] = exp_acc(v[i] - mx);
                acc += v[i];
            }
        }
        F sum = (F)0;
#pragma unroll
        for (int l = 0; l < LANES; ++l) sum += __shfl_sync(mask, acc, l, LANES);
        const F inverse = (F)1 / sum;
#pragma unroll
        for (int i = 0; i < N; ++i) v[i] = v[i] * inverse;
    }
    // This lane's best LIST columns by selection value (ties keep the earlier, lower column).
    F lv[LIST], lp[LIST];
    int li[LIST];
#pragma unroll
    for (int s = 0; s < LIST; ++s) {
        lv[s] = neg_inf<F>();
        lp[s] = (F)0;
        li[s] = 0x7FFFFFFF;
    }
#pragma unroll
    for (int i = 0; i < N; ++i) {
        const int j = lane + LANES * i;
        if (j < E) {
            p_row[j] = v[i];
            const F sel = bias ? v[i] + bias[j] : v[i];
            if (li[LIST - 1] == 0x7FFFFFFF || sel > lv[LIST - 1]) {
                lv[LIST - 1] = sel;
                lp[LIST - 1] = v[i];
                li[LIST - 1] = j;
#pragma unroll
                for (int s = LIST - 1; s > 0; --s) {
                    if (li[s - 1] == 0x7FFFFFFF || lv[s] > lv[s - 1]) {
                        F a = lv[s]; lv[s] = lv[s - 1]; lv[s - 1] = a;
                        F b = lp[s]; lp[s] = lp[s - 1]; lp[s - 1] = b;
                        int c = li[s]; li[s] = li[s - 1]; li[s - 1] = c;
                    }
                }
            }
        }
    }
    // k rounds: the best head over the 16 lists wins and its lane pops it.
    F picked[LIST];
    int ids[LIST];
    F total = (F)0;
#pragma unroll
    for (int s = 0; s < LIST; ++s) {
        if (s < k) {
            F bv = lv[0], bp = lp[0];
            int bi = li[0];
#pragma unroll
            for (int o = LANES / 2; o > 0; o >>= 1) {
                const F ov = __shfl_xor_sync(mask, bv, o, LANES);
                const F op = __shfl_xor_sync(mask, bp, o, LANES);
                const int oi = __shfl_xor_sync(mask, bi, o, LANES);
                if (better(ov, oi, bv, bi)) {
                    bv = ov;
                    bp = op;
                    bi = oi;
                }
            }
            if (li[0] == bi) {
#pragma unroll
                for (int q = 0; q < LIST - 1; ++q) {
                    lv[q] = lv[q + 1];
                    lp[q] = lp[q + 1];
                    li[q] = li[q + 1];
                }
                lv[LIST - 1] = neg_inf<F>();
                li[LIST - 1] = 0x7FFFFFFF;
            }
            picked[s] = bp;
            ids[s] = bi;
            total += bp;
        }
    }
    if (lane == 0) {
#pragma unroll
        for (int s = 0; s < LIST; ++s) {
            if (s < k) {
                expert_ids[t * k + s] = ids[s];
                weights[t * k + s] = normalize_topk && total != (F)0 ? picked[s] / total : picked[s];
            }
        }
    }
}

#define GATE_LANES(name, L, N, LIST)                                                                         \
    extern "C" __global__ void __launch_bounds__(128) name(                                            \
        const L* logits, int T, int E, int k, int sigmoid, int normalize_topk, const Elem<L>::Acc* bias, \
        Elem<L>::Acc* probs, int* expert_ids, Elem<L>::Acc* weights, int* src, long long rows) {       \
        gate_lanes<L, N, LIST>(logits, T, E, k, sigmoid, normalize_topk, bias, probs, expert_ids, weights,   \
                         src, rows);                                                                   \
    }
GATE_LANES(gate_lanes_f32_n4_k2, float, 4, 2)
GATE_LANES(gate_lanes_f32_n4_k8, float, 4, 8)
GATE_LANES(gate_lanes_f32_n16_k2, float, 16, 2)
GATE_LANES(gate_lanes_f32_n16_k8, float, 16, 8)
GATE_LANES(gate_lanes_f16_n4_k2, f16, 4, 2)
GATE_LANES(gate_lanes_f16_n4_k8, f16, 4, 8)
GATE_LANES(gate_lanes_f16_n16_k2, f16, 16, 2)
GATE_LANES(gate_lanes_f16_n16_k8, f16, 16, 8)
GATE_LANES(gate_lanes_bf16_n4_k2, bf16, 4, 2)
GATE_LANES(gate_lanes_bf16_n4_k8, bf16, 4, 8)
GATE_LANES(gate_lanes_bf16_n16_k2, bf16, 16, 2)
GATE_LANES(gate_lanes_bf16_n16_k8, bf16, 16, 8)
