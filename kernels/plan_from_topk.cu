// Plans from given picks: one thread per token copies its k picks into the plan (an expert id
// outside [0, E) becomes an unused slot: id -1, weight 0), widening the weights to the accumulation
// type, adds them into its (zeroed) probs row in slot order, and sets every pick's dest to -1. The
// rows are then laid out by the plan kernels of plan.cu, as for route (which write the dest of the
// picks they keep or drop; the "score" priority's kernel only visits picks of a real expert).
#include "common.cuh"

template <typename W>
__device__ void import_picks(const i64* ids, const W* w, int T, int k, int E, int* expert_ids,
                             typename Elem<W>::Acc* weights, typename Elem<W>::Acc* probs, int* dest) {
    typedef typename Elem<W>::Acc F;
    const long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= T) return;
    F* row = probs + t * E;
    for (int s = 0; s < k; ++s) {
        const long long i = t * k + s;
        const i64 e = ids[i];
        const bool used = e >= 0 && e < E;
        const F v = used ? Elem<W>::load(w[i]) : (F)0;
        expert_ids[i] = used ? (int)e : -1;
        weights[i] = v;
        dest[i] = -1;
        if (used) row[e] += v;
    }
}

#define IMPORT(name, W)                                                                                       \
    extern "C" __global__ void name(const i64* ids, const W* w, int T, int k, int E, int* expert_ids,          \
                                    Elem<W>::Acc* weights, Elem<W>::Acc* probs, int* dest) {                  \
        import_picks<W>(ids, w, T, k, E, expert_ids, weights, probs, dest);                                   \
    }
IMPORT(import_picks_f32, float)
IMPORT(import_picks_f64, double)
IMPORT(import_picks_f16, f16)
IMPORT(import_picks_bf16, bf16)
