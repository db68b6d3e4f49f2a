// Shared device helpers: element types and their accumulation types, the CPU core's exact exp and
// sigmoid (compiled with --fmad=false, so results are bit-identical with the Rust kernels), and
// block-wide scans.
#pragma once

typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;
typedef long long i64;

struct f16 { u16 bits; };
struct bf16 { u16 bits; };

// Elem<T>::Acc is the accumulation type; load widens exactly, store rounds to nearest even.
template <typename T> struct Elem;
template <> struct Elem<float> {
    typedef float Acc;
    static __device__ __forceinline__ float load(float v) { return v; }
    static __device__ __forceinline__ float store(float v) { return v; }
};
template <> struct Elem<double> {
    typedef double Acc;
    static __device__ __forceinline__ double load(double v) { return v; }
    static __device__ __forceinline__ double store(double v) { return v; }
};
template <> struct Elem<f16> {
    typedef float Acc;
    static __device__ __forceinline__ float load(f16 v) {
        float f;
        asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(v.bits));
        return f;
    }
    static __device__ __forceinline__ f16 store(float v) {
        f16 h;
        asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h.bits) : "f"(v));
        return h;
    }
};
template <> struct Elem<bf16> {
    typedef float Acc;
    static __device__ __forceinline__ float load(bf16 v) { return __uint_as_float(((u32)v.bits) << 16); }
    // The same rounding as the CPU core: nearest even, NaN stays a quiet NaN.
    static __device__ __forceinline__ bf16 store(float v) {
        u32 bits = __float_as_uint(v);
        bf16 b;
        if ((bits & 0x7FFFFFFFu) > 0x7F800000u) {
            b.bits = (u16)((bits >> 16) | 0x0040u);
        } else {
            b.bits = (u16)((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16);
        }
        return b;
    }
};

// V consecutive elements moved as one aligned load or store.
template <typename T, int V> struct alignas(sizeof(T) * V) Pack { T v[V]; };

// exp(x) in f32 exactly as src/cpu/fast_math.rs computes it (Cody–Waite + degree-7 Taylor).
__device__ __forceinline__ float pow2_int(int n) { return __uint_as_float(((u32)(n + 127)) << 23); }

__device__ __forceinline__ float exp_acc(float x) {
    const float LOG2E = 1.44269504088896340735992468100189214f;
    const float LN2_HI = 0.69314575f;
    const float LN2_LO = 1.4286068e-6f;
    const float EXP_MIN = -104.0f;
    const float EXP_MAX = 88.72284f;
    const float ROUND_MAGIC = 12582912.0f;
    float xc = x;
    if (xc < EXP_MIN) xc = EXP_MIN;
    if (xc > EXP_MAX) xc = EXP_MAX;
    float shifted = xc * LOG2E + ROUND_MAGIC;
    float n = shifted - ROUND_MAGIC;
    int n_int = (int)__float_as_uint(shifted) - (int)__float_as_uint(ROUND_MAGIC);
    float r = (xc - n * LN2_HI) - n * LN2_LO;
    float p = 1.0f + r * (1.0f + r * (0.5f + r * (1.0f / 6.0f + r * (1.0f / 24.0f + r * (1.0f / 120.0f
              + r * (1.0f / 720.0f + r * (1.0f / 5040.0f)))))));
    int half = n_int >> 1;
    float v = p * pow2_int(half) * pow2_int(n_int - half);
    return x > EXP_MAX ? __int_as_float(0x7F800000) : v;
}
__device__ __forceinline__ double exp_acc(double x) { return exp(x); }

template <typename F> __device__ __forceinline__ F sigmoid_acc(F x) {
    F e = exp_acc(-fabs(x));
    F s = (F)1 / ((F)1 + e);
    return x >= (F)0 ? s : e * s;
}

template <typename F> __device__ __forceinline__ F neg_inf();
template <> __device__ __forceinline__ float neg_inf<float>() { return __int_as_float(0xFF800000); }
template <> __device__ __forceinline__ double neg_inf<double>() { return __longlong_as_double(0xFFF0000000000000ll); }
template <typename F> __device__ __forceinline__ F pos_inf() { return -neg_inf<F>(); }

// Order-preserving unsigned keys of floats (-0.0 is treated as +0.0, as a comparison would).
__device__ __forceinline__ u64 order_key(float v) {
    u32 b = __float_as_uint(v == 0.0f ? 0.0f : v);
    return (u64)((b & 0x80000000u) ? ~b : (b | 0x80000000u));
}
__device__ __forceinline__ u64 order_key(double v) {
    u64 b = (u64)__double_as_longlong(v == 0.0 ? 0.0 : v);
    return (b & 0x8000000000000000ull) ? ~b : (b | 0x8000000000000000ull);
}

// Sets src[0 .. rows) to -1 (padding) with every thread of the grid.
__device__ __forceinline__ void fill_rows(int* src, long long rows) {
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < rows; i += stride) src[i] = -1;
}

// Exclusive prefix sum of one int per thread over the block (blockDim.x a multiple of 32, at most
// 1024); `total` receives the block's sum. Every thread of the block must call it.
__device__ __forceinline__ int block_exclusive_scan(int value, int* total) {
    __shared__ int warp_sums[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    int inclusive = value;
    for (int o = 1; o < 32; o <<= 1) {
        int n = __shfl_up_sync(0xFFFFFFFFu, inclusive, o);
        if (lane >= o) inclusive += n;
    }
    __syncthreads();
    if (lane == 31) warp_sums[warp] = inclusive;
    __syncthreads();
    if (warp == 0) {
        int w = lane < warps ? warp_sums[lane] : 0;
        for (int o = 1; o < 32; o <<= 1) {
            int n = __shfl_up_sync(0xFFFFFFFFu, w, o);
            if (lane >= o) w += n;
        }
        warp_sums[lane] = w;
    }
    __syncthreads();
    int before = warp == 0 ? 0 : warp_sums[warp - 1];
    *total = warp_sums[warps - 1];
    return before + inclusive - value;
}
