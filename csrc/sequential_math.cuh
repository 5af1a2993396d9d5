// Sequential OBS (SPEC §2d): the per-block program of the CUDA kernel (sequential.cu), written
// as __host__ __device__ phases against a runner, so the CPU harness (host_harness.cpp) runs
// exactly this code against the float64 oracle (python_tests/test_sequential.py).
//
// One warp per Fisher block. The block's copy of H = F⁻¹ (B×B, dense, leading dimension B) and
// its vectors live in shared memory for all U greedy steps; F⁻¹ in global memory is only read.
// Per step: every lane scores its units (strided), lane 0 takes the argmin (ties to the lowest
// unit, as the torch backend) and records it, then the unit's live members are removed one at a
// time by rank-1 downdates, each lane updating its rows:
//   c = H[q, :],  p = c_q;   w ← w − c·w_q/p;   H ← H − c cᵀ/p
// A pivot ≤ 0 (not positive definite in float32) removes the weight without compensation and a
// single weight with H_qq ≤ 0 scores w²/(2·FLT_MIN): the torch backend's rules, so no block is
// handed back. Rows and columns of removed coordinates are never read again.
#pragma once

#include <float.h>

#include "obk_math.cuh"

namespace obk {

struct SequentialBlock {
  const float* blk;  // this block's F⁻¹ (dense or packed), read only
  bool packed;
  int B, nv;         // block size; valid weights (the rest is padding)
  int unit;          // weights per step: 1, or 4 for block4
  int nm_m, nm_n;    // N:M group size and N (0, 0 otherwise)
  int U;             // units per block = B / unit
  // shared memory
  float* H;          // B·B
  float* w;          // B
  float* c;          // B: the pivot row of the current removal
  float* rho;        // U
  int* alive;        // B: 1 = live weight
  float* scal;       // [0] scale = 1/p (or 0), [1] w_q, [2] best ρ, [3] running loss
  int* iscal;        // [0] chosen unit (−1: none), [1] a flag shared by all lanes
};

OBK_HD long long sequential_smem_bytes(int B, int U) {
  return ((long long)B * B + 3LL * B + U + 4) * 4 + (B + 2) * 4LL;
}

OBK_HD SequentialBlock sequential_block_layout(unsigned char* smem, const float* blk, bool packed, int B, int nv,
                                               int unit, int nm_m, int nm_n) {
  SequentialBlock s;
  s.blk = blk;
  s.packed = packed;
  s.B = B;
  s.nv = nv;
  s.unit = unit;
  s.nm_m = nm_m;
  s.nm_n = nm_n;
  s.U = B / unit;
  float* f = reinterpret_cast<float*>(smem);
  s.H = f;
  s.w = s.H + (long long)B * B;
  s.c = s.w + B;
  s.rho = s.c + B;
  s.scal = s.rho + s.U;
  s.alive = reinterpret_cast<int*>(s.scal + 4);
  s.iscal = s.alive + B;
  return s;
}

// Copy of the valid part of H (padding rows and columns 0), w with pruned weights zeroed.
OBK_HD void seq_load(const SequentialBlock& s, const float* weight, const unsigned char* pruned, int lane, int lanes) {
  for (int i = lane; i < s.B; i += lanes) {
    const bool valid = i < s.nv, dead = valid && pruned && pruned[i];
    for (int j = 0; j < s.B; ++j) s.H[i * s.B + j] = valid && j < s.nv ? s.blk[block_offset(s.B, s.packed, i, j)] : 0.0f;
    s.w[i] = valid && !dead ? weight[i] : 0.0f;
    s.alive[i] = valid && !dead ? 1 : 0;
  }
}

// One lane: whether already-pruned coordinate q is still coupled to others (then it is conditioned on).
OBK_HD void seq_coupled(const SequentialBlock& s, const unsigned char* pruned, int q, int lane) {
  if (lane != 0) return;
  int flag = 0;
  if (pruned && q < s.nv && pruned[q])
    for (int j = 0; j < s.nv; ++j) flag |= j != q && s.H[q * s.B + j] != 0.0f;
  s.iscal[1] = flag;
}

// Removal of coordinate q, part 1: the pivot row, 1/p and w_q (read before part 2 writes them).
OBK_HD void seq_pivot(const SequentialBlock& s, int q, int lane, int lanes) {
  for (int j = lane; j < s.B; j += lanes) s.c[j] = s.H[q * s.B + j];
  if (lane == 0) {
    const float p = s.H[q * s.B + q];
    s.scal[0] = p > 0.0f ? 1.0f / p : 0.0f;
    s.scal[1] = s.w[q];
  }
}

// Part 2: each lane its rows of H and entries of w.
OBK_HD void seq_downdate(const SequentialBlock& s, int lane, int lanes) {
  const float scale = s.scal[0], wq = s.scal[1];
  for (int i = lane; i < s.B; i += lanes) {
    const float ci = s.c[i] * scale;
    for (int j = 0; j < s.B; ++j) s.H[i * s.B + j] = fmaf(-ci, s.c[j], s.H[i * s.B + j]);
    s.w[i] = fmaf(-ci, wq, s.w[i]);
  }
}

// ρ of unit u (+inf when it is not a candidate).
OBK_HD float seq_unit_score(const SequentialBlock& s, int u) {
  if (s.unit == 1) {
    if (!s.alive[u]) return INFINITY;
    if (s.nm_n > 0) {
      int lost = 0;
      const int first = u / s.nm_m * s.nm_m;
      for (int t = first; t < first + s.nm_m; ++t) lost += !s.alive[t];
      if (lost >= s.nm_n) return INFINITY;
    }
    const float h = s.H[u * s.B + u];
    return 0.5f * s.w[u] * s.w[u] / (h > FLT_MIN ? h : FLT_MIN);
  }
  int idx[MAX_GROUP];
  int n = 0;
  for (int t = u * s.unit; t < u * s.unit + s.unit; ++t)
    if (s.alive[t]) idx[n++] = t;
  if (n == 0) return INFINITY;
  float A[MAX_GROUP * MAX_GROUP], x[MAX_GROUP];
  for (int r = 0; r < n; ++r) {
    x[r] = s.w[idx[r]];
    for (int t = 0; t < n; ++t) A[r * MAX_GROUP + t] = s.H[idx[r] * s.B + idx[t]];
  }
  return small_quad_inverse(n, A, x);
}

OBK_HD void seq_scores(const SequentialBlock& s, int lane, int lanes) {
  for (int u = lane; u < s.U; u += lanes) s.rho[u] = seq_unit_score(s, u);
}

// One lane: the argmin (first minimum), recorded at step k of order/cumloss.
OBK_HD void seq_choose(const SequentialBlock& s, int k, long long* order, float* cumloss, int lane) {
  if (lane != 0) return;
  int best = -1;
  for (int u = 0; u < s.U; ++u)
    if (s.rho[u] < INFINITY && (best < 0 || s.rho[u] < s.rho[best])) best = u;
  s.iscal[0] = best;
  if (best < 0) return;
  s.scal[3] += s.rho[best];
  order[k] = best;
  cumloss[k] = s.scal[3];
}

// The whole block (runner: each(f) runs f(lane, lanes) on every lane, barrier() is __syncwarp()).
// order (U,) int64 and cumloss (U,) float32 are this block's rows, prefilled with −1 / +inf.
template <class Warp>
OBK_HD void sequential_program(Warp& warp, SequentialBlock& s, const float* weight, const unsigned char* pruned,
                               long long* order, float* cumloss) {
  warp.each([&](int lane, int lanes) {
    seq_load(s, weight, pruned, lane, lanes);
    if (lane == 0) s.scal[3] = 0.0f;
  });
  warp.barrier();
  auto remove = [&](int q) {
    warp.each([&](int lane, int lanes) { seq_pivot(s, q, lane, lanes); });
    warp.barrier();
    warp.each([&](int lane, int lanes) { seq_downdate(s, lane, lanes); });
    warp.barrier();
  };
  for (int q = 0; pruned && q < s.nv; ++q) {  // condition on pruned weights H still couples
    warp.each([&](int lane, int) { seq_coupled(s, pruned, q, lane); });
    warp.barrier();
    if (s.iscal[1]) remove(q);
  }
  for (int k = 0; k < s.U; ++k) {
    warp.each([&](int lane, int lanes) { seq_scores(s, lane, lanes); });
    warp.barrier();
    warp.each([&](int lane, int) { seq_choose(s, k, order, cumloss, lane); });
    warp.barrier();
    const int u = s.iscal[0];
    if (u < 0) break;
    for (int q = u * s.unit; q < u * s.unit + s.unit; ++q) {
      if (!s.alive[q]) continue;
      remove(q);
      warp.each([&](int lane, int) {
        if (lane == 0) s.alive[q] = 0;
      });
      warp.barrier();
    }
  }
}

}  // namespace obk
