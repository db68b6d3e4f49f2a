// Block-wide selection of the c largest keys (radix select, ties to the lower position) with
// each taken position's rank in position order.
#pragma once
#include "common.cuh"

// Block-wide radix selection of the c largest of n keys (c < n): the c-th largest key and how
// many keys equal to it are among the c.
template <typename KeyFn>
__device__ void radix_threshold(int n, int c, int key_bits, KeyFn key, u64* threshold, int* ties_taken) {
    __shared__ int hist[256];
    __shared__ u64 s_prefix;
    __shared__ int s_remaining;
    if (threadIdx.x == 0) {
        s_prefix = 0;
        s_remaining = c;
    }
    u64 mask = 0;
    for (int shift = key_bits - 8; shift >= 0; shift -= 8) {
        for (int i = threadIdx.x; i < 256; i += blockDim.x) hist[i] = 0;
        __syncthreads();
        const u64 prefix = s_prefix;
        for (int i = threadIdx.x; i < n; i += blockDim.x) {
            const u64 k = key(i);
            if ((k & mask) == prefix) atomicAdd(&hist[(k >> shift) & 255], 1);
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            int remaining = s_remaining, digit = 0;
            for (int d = 255; d >= 0; --d) {
                if (hist[d] >= remaining) {
                    digit = d;
                    break;
                }
                remaining -= hist[d];
            }
            s_prefix = prefix | ((u64)digit << shift);
            s_remaining = remaining;
        }
        __syncthreads();
        mask |= 255ull << shift;
    }
    *threshold = s_prefix;
    *ties_taken = s_remaining;
    __syncthreads();
}

// Takes the c largest of n keys (ties to the lower position) and calls emit(i, taken, rank)
// for every position i, where rank is i's rank among the taken positions in position order.
template <typename KeyFn, typename EmitFn>
__device__ void select_largest(int n, int c, int key_bits, KeyFn key, EmitFn emit) {
    u64 threshold = 0;
    int ties = 0;
    const bool all = c >= n;
    if (!all && c > 0) radix_threshold(n, c, key_bits, key, &threshold, &ties);
    int tie_carry = 0, taken_carry = 0;
    for (int base = 0; base < n; base += blockDim.x) {
        const int i = base + threadIdx.x;
        bool taken = false;
        bool tie = false;
        bool above = false;
        if (i < n) {
            if (all) {
                taken = true;
            } else if (c > 0) {
                const u64 k = key(i);
                above = k > threshold;
                tie = k == threshold;
            }
        }
        int tie_total;
        const int tie_before = block_exclusive_scan(tie ? 1 : 0, &tie_total);
        if (!all && c > 0) taken = above || (tie && tie_carry + tie_before < ties);
        int taken_total;
        const int rank = block_exclusive_scan(taken ? 1 : 0, &taken_total);
        if (i < n) emit(i, taken, taken_carry + rank);
        tie_carry += tie_total;
        taken_carry += taken_total;
    }
}
