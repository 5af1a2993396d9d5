// Per-block math of the CUDA kernels, written once as inline __host__ __device__
// functions so the same code runs in the kernels (woodbury.cu, scores.cu, update.cu)
// and in the CPU harness (host_harness.cpp) that the CPU tests drive against the
// float64 oracle. Nothing here touches threadIdx, shared-memory qualifiers, shuffles or
// barriers: a kernel is a sequence of these phases separated by barriers, and the
// harness runs the same phases lane by lane.
//
// F⁻¹ layouts (one Fisher block of B weights, float32):
//   dense  (B, B) row-major
//   packed upper triangle, rows concatenated: (i, j ≥ i) at i·(2B − i + 1)/2 + (j − i),
//          B(B+1)/2 floats — the order of torch.triu_indices(B, B).
#pragma once

#include <math.h>

#include <type_traits>

// OBK_OPAQUE(x): the compiler must assume x changed here. Used inside the F⁻¹ window loops
// so the ~R·BP per-entry offsets are recomputed per window instead of being hoisted out
// of the loop and kept live in registers (+30..60 registers per thread, ptxas -v).
#if defined(__CUDA_ARCH__)
#define OBK_OPAQUE(x) asm volatile("" : "+r"(x))
#else
#define OBK_OPAQUE(x) ((void)0)
#endif

#ifdef __CUDACC__
#define OBK_HD __host__ __device__ __forceinline__
typedef float4 obk_f4;
#else
#define OBK_HD inline
struct alignas(16) obk_f4 {
  float x, y, z, w;
};
#endif

namespace obk {

// Largest group (block4 = 4, N:M = M) the score and update kernels handle per thread.
constexpr int MAX_GROUP = 8;
// Largest Fisher block the register-resident Woodbury kernel holds (one row per thread).
constexpr int MAX_WOODBURY_B = 128;
// Gradients staged in shared memory at a time by the Woodbury kernel (double-buffered).
constexpr int WOODBURY_SUBCHUNK = 8;

OBK_HD long long packed_size(int B) { return (long long)B * (B + 1) / 2; }

OBK_HD long long packed_row_start(int B, int i) { return (long long)i * (2 * B - i + 1) / 2; }

// Offset of element (i, j) of one block, in either layout (symmetric: (i, j) == (j, i)).
OBK_HD long long block_offset(int B, bool packed, int i, int j) {
  if (!packed) return (long long)i * B + j;
  if (i > j) {
    int t = i;
    i = j;
    j = t;
  }
  return packed_row_start(B, i) + (j - i);
}

// Floats one block occupies in finv's storage.
OBK_HD long long block_stride(int B, bool packed) { return packed ? packed_size(B) : (long long)B * B; }

// ---------------------------------------------------------------------------------
// Woodbury (SPEC §2a): the rows of one Fisher block that one thread owns.
//
// A block's B rows are spread over T = ceil(B / R) threads; thread lt owns rows
// lt + s·T for s < R, each held dense in registers (BP ≥ B floats, zero-padded to a
// multiple of 4 so shared-memory reads are 16-byte vectors). Per gradient g:
//   u = F⁻¹ g          each thread its own rows: no reduction (matvec)
//   gᵀu                one partial per thread, summed over the block's T threads (partial)
//   F⁻¹ −= u uᵀ / (m + gᵀu)   each thread its own rows, all of u read from shared memory (rank1)
// Symmetry: F⁻¹ crosses memory as the upper triangle only (packed: half the bytes), and
// the stored block is exactly symmetric because each (i ≤ j) pair is written by row i's owner.
// Loading and storing go through shared memory in coalesced windows (gather/scatter).
template <int BP, int R>
struct WoodburyRows {
  static_assert(BP % 4 == 0, "BP must be a multiple of 4");
  float f[R][BP];

  OBK_HD static int row(int lt, int T, int s) { return lt + s * T; }

  OBK_HD void clear() {
#pragma unroll
    for (int s = 0; s < R; ++s)
#pragma unroll
      for (int j = 0; j < BP; ++j) f[s][j] = 0.0f;
  }

  // F⁻¹ crosses device memory through shared memory, a window at a time: the CTA copies
  // window [x0, x0 + len) of its blocks' storage with coalesced accesses, and each thread
  // picks its rows' entries out of it (gather) or drops them in (scatter). `base` is the
  // offset of this thread's block within the CTA's storage. Reading rows straight from
  // global memory instead would make every warp load touch ~25 rows' cache lines.
  // Offsets are int: a CTA's storage is < 2^31 floats (≤ 256 blocks of ≤ 128² floats).
  OBK_HD void gather(const float* window, int x0, int len, int base, int B, bool packed, int lt, int T) {
    OBK_OPAQUE(B);
#pragma unroll
    for (int s = 0; s < R; ++s) {
      const int i = row(lt, T, s);
#pragma unroll
      for (int j = 0; j < BP; ++j) {
        if (i >= B || j >= B) continue;
        const int o = base + (int)block_offset(B, packed, i, j) - x0;
        if (o >= 0 && o < len) f[s][j] = window[o];
      }
    }
  }

  // Row i's owner writes (i, j ≥ i), and for dense storage (j, i) too: every entry of the
  // stored block has exactly one writer, and the block comes out exactly symmetric.
  OBK_HD void scatter(float* window, int x0, int len, int base, int B, bool packed, int lt, int T) const {
    OBK_OPAQUE(B);
#pragma unroll
    for (int s = 0; s < R; ++s) {
      const int i = row(lt, T, s);
#pragma unroll
      for (int j = 0; j < BP; ++j) {
        if (i >= B || j >= B || j < i) continue;
        const int o = base + (packed ? (int)packed_row_start(B, i) + (j - i) : i * B + j) - x0;
        if (o >= 0 && o < len) window[o] = f[s][j];
        if (!packed) {
          const int t = base + j * B + i - x0;
          if (t >= 0 && t < len) window[t] = f[s][j];
        }
      }
    }
  }

  // u[s] = row(s) · g, with g (BP floats, zero beyond B) 16-byte aligned.
  // Four accumulators per row: independent FMA chains, and a shorter summation path.
  OBK_HD void matvec(const float* g, float u[R]) const {
    const obk_f4* g4 = reinterpret_cast<const obk_f4*>(g);
    float acc[R][4];
#pragma unroll
    for (int s = 0; s < R; ++s) acc[s][0] = acc[s][1] = acc[s][2] = acc[s][3] = 0.0f;
#pragma unroll
    for (int q = 0; q < BP / 4; ++q) {
      const obk_f4 v = g4[q];
#pragma unroll
      for (int s = 0; s < R; ++s) {
        acc[s][0] = fmaf(f[s][4 * q + 0], v.x, acc[s][0]);
        acc[s][1] = fmaf(f[s][4 * q + 1], v.y, acc[s][1]);
        acc[s][2] = fmaf(f[s][4 * q + 2], v.z, acc[s][2]);
        acc[s][3] = fmaf(f[s][4 * q + 3], v.w, acc[s][3]);
      }
    }
#pragma unroll
    for (int s = 0; s < R; ++s) u[s] = (acc[s][0] + acc[s][1]) + (acc[s][2] + acc[s][3]);
  }

  // This thread's share of gᵀu.
  OBK_HD static float partial(const float* g, const float u[R], int B, int lt, int T) {
    float p = 0.0f;
#pragma unroll
    for (int s = 0; s < R; ++s) {
      const int i = row(lt, T, s);
      if (i < B) p = fmaf(g[i], u[s], p);
    }
    return p;
  }

  // rows −= (u_i / denom) · uᵀ, u (BP floats, zero beyond B) 16-byte aligned.
  OBK_HD void rank1(const float* u_all, const float u[R], float denom) {
    const obk_f4* u4 = reinterpret_cast<const obk_f4*>(u_all);
    float c[R];
#pragma unroll
    for (int s = 0; s < R; ++s) c[s] = -u[s] / denom;
#pragma unroll
    for (int q = 0; q < BP / 4; ++q) {
      const obk_f4 v = u4[q];
#pragma unroll
      for (int s = 0; s < R; ++s) {
        f[s][4 * q + 0] = fmaf(c[s], v.x, f[s][4 * q + 0]);
        f[s][4 * q + 1] = fmaf(c[s], v.y, f[s][4 * q + 1]);
        f[s][4 * q + 2] = fmaf(c[s], v.z, f[s][4 * q + 2]);
        f[s][4 * q + 3] = fmaf(c[s], v.w, f[s][4 * q + 3]);
      }
    }
  }
};

// Which WoodburyRows<BP, R> serves a block size B, and how threads are grouped.
struct WoodburyConfig {
  int BP;              // padded row length (template argument)
  int R;               // rows per thread (template argument)
  int T;               // threads per Fisher block = ceil(B / R)
  int blocks_per_cta;  // Fisher blocks per thread block
  int threads;         // blockDim.x: blocks_per_cta·T rounded up to a warp
  int max_warps;       // most warps one Fisher block's threads can touch
};

// Rows per thread by default: 2 for 32 < B ≤ 64 (every g/u vector read from shared
// memory feeds 8 FMAs instead of 4, ≤ 128 floats of F⁻¹ in registers: 189 registers at
// B = 50 on sm_90, one 256-thread CTA per SM), 1 otherwise (106 registers at B = 50, two
// CTAs per SM). Which is faster is NOT MEASURED: bench/bench_cuda_gpu.py --rows 1,2
// times both (R = 1 and R = 2 are both compiled for 32 < B ≤ 64).
OBK_HD int woodbury_default_rows(int B) { return B > 32 && B <= 64 ? 2 : 1; }

// rows: 1, or 2 for 32 < B ≤ 64 (woodbury_dispatch refuses other pairs). BP rounds B up
// to a multiple of 4 up to 64, of 8 above; about 256 threads per CTA.
OBK_HD WoodburyConfig woodbury_config(int B, int rows) {
  WoodburyConfig c;
  c.R = rows;
  c.BP = B <= 64 ? (B + 3) / 4 * 4 : (B + 7) / 8 * 8;
  c.T = (B + c.R - 1) / c.R;
  c.max_warps = (c.T + 31) / 32 + 1;
  // as many blocks as fit 256 threads and the 48 KiB of shared memory a launch gets
  // without opting in (small B would otherwise ask for 78 KiB)
  const int per_block_bytes = 2 * (WOODBURY_SUBCHUNK * c.BP + c.BP + c.max_warps) * 4;
  const int by_threads = 256 / c.T > 0 ? 256 / c.T : 1;
  const int by_smem = 48 * 1024 / per_block_bytes;
  c.blocks_per_cta = by_threads < by_smem ? by_threads : by_smem;
  c.threads = (c.blocks_per_cta * c.T + 31) / 32 * 32;
  return c;
}

// ---------------------------------------------------------------------------------
// Small dense solves (n ≤ MAX_GROUP) for group scores and the "obs" group update.
// A is n×n row-major with leading dimension MAX_GROUP and is overwritten.

// Cholesky A = L Lᵀ in place (lower); false when a pivot is not positive in float32.
OBK_HD bool small_cholesky(int n, float* A) {
  for (int k = 0; k < n; ++k) {
    float d = A[k * MAX_GROUP + k];
    for (int p = 0; p < k; ++p) d -= A[k * MAX_GROUP + p] * A[k * MAX_GROUP + p];
    if (!(d > 0.0f)) return false;
    d = sqrtf(d);
    A[k * MAX_GROUP + k] = d;
    for (int i = k + 1; i < n; ++i) {
      float s = A[i * MAX_GROUP + k];
      for (int p = 0; p < k; ++p) s -= A[i * MAX_GROUP + p] * A[k * MAX_GROUP + p];
      A[i * MAX_GROUP + k] = s / d;
    }
  }
  return true;
}

// x ← A⁻¹ x by Gaussian elimination with partial pivoting (the fallback when A is not
// positive definite in float32, as torch falls back to a general solve).
OBK_HD void small_lu_solve(int n, float* A, float* x) {
  for (int k = 0; k < n; ++k) {
    int piv = k;
    for (int i = k + 1; i < n; ++i)
      if (fabsf(A[i * MAX_GROUP + k]) > fabsf(A[piv * MAX_GROUP + k])) piv = i;
    if (piv != k) {
      for (int j = 0; j < n; ++j) {
        float t = A[k * MAX_GROUP + j];
        A[k * MAX_GROUP + j] = A[piv * MAX_GROUP + j];
        A[piv * MAX_GROUP + j] = t;
      }
      float t = x[k];
      x[k] = x[piv];
      x[piv] = t;
    }
    for (int i = k + 1; i < n; ++i) {
      const float l = A[i * MAX_GROUP + k] / A[k * MAX_GROUP + k];
      for (int j = k + 1; j < n; ++j) A[i * MAX_GROUP + j] -= l * A[k * MAX_GROUP + j];
      x[i] -= l * x[k];
    }
  }
  for (int k = n - 1; k >= 0; --k) {
    float s = x[k];
    for (int j = k + 1; j < n; ++j) s -= A[k * MAX_GROUP + j] * x[j];
    x[k] = s / A[k * MAX_GROUP + k];
  }
}

// ½ wᵀ A⁻¹ w (A is overwritten): ½‖L⁻¹w‖² through Cholesky, else ½ wᵀx from the LU solve.
OBK_HD float small_quad_inverse(int n, float* A, const float* w) {
  float keep[MAX_GROUP * MAX_GROUP];
  for (int i = 0; i < n * MAX_GROUP; ++i) keep[i] = A[i];
  if (small_cholesky(n, A)) {
    float q = 0.0f;
    float y[MAX_GROUP];
    for (int i = 0; i < n; ++i) {
      float s = w[i];
      for (int p = 0; p < i; ++p) s -= A[i * MAX_GROUP + p] * y[p];
      y[i] = s / A[i * MAX_GROUP + i];
      q += y[i] * y[i];
    }
    return 0.5f * q;
  }
  float x[MAX_GROUP];
  for (int i = 0; i < n; ++i) x[i] = w[i];
  small_lu_solve(n, keep, x);
  float q = 0.0f;
  for (int i = 0; i < n; ++i) q += w[i] * x[i];
  return 0.5f * q;
}

// x ← A⁻¹ x (A overwritten): Cholesky solve, else LU with partial pivoting.
OBK_HD void small_solve(int n, float* A, float* x) {
  float keep[MAX_GROUP * MAX_GROUP];
  for (int i = 0; i < n * MAX_GROUP; ++i) keep[i] = A[i];
  if (small_cholesky(n, A)) {
    for (int i = 0; i < n; ++i) {
      float s = x[i];
      for (int p = 0; p < i; ++p) s -= A[i * MAX_GROUP + p] * x[p];
      x[i] = s / A[i * MAX_GROUP + i];
    }
    for (int i = n - 1; i >= 0; --i) {
      float s = x[i];
      for (int p = i + 1; p < n; ++p) s -= A[p * MAX_GROUP + i] * x[p];
      x[i] = s / A[i * MAX_GROUP + i];
    }
    return;
  }
  small_lu_solve(n, keep, x);
}

// ---------------------------------------------------------------------------------
// Scores (SPEC §2b): one group per thread. `finv` is the whole (num_blocks, …) array.

struct ScoreArgs {
  const float* weight;         // (d,) float32
  const unsigned char* pruned; // (d,) bool or nullptr
  const float* finv;           // (num_blocks, B, B) or (num_blocks, B(B+1)/2)
  bool packed;
  int B;
  long long d;
  int group;                   // 1 (unstructured), 4 (block4) or M
  int n_prune;                 // N for N:M, 0 otherwise
  const int* subset_bits;      // (C,) member bitmasks of the N-subsets (N:M only)
  int num_subsets;             // C
  float* out;                  // (d,), (d/4,) or (d/M, C) float32
};

OBK_HD const float* block_of(const float* finv, int B, bool packed, long long weight_index, int* local) {
  const long long b = weight_index / B;
  *local = (int)(weight_index - b * B);
  return finv + b * block_stride(B, packed);
}

OBK_HD float neg_inf() { return -INFINITY; }
OBK_HD float pos_inf() { return INFINITY; }

// Score(s) of group q: writes out[q] or out[q·C .. q·C + C).
OBK_HD void score_group(const ScoreArgs& a, long long q) {
  const int g = a.group;
  const long long first = q * g;
  int i0;
  const float* blk = block_of(a.finv, a.B, a.packed, first, &i0);
  unsigned pruned_bits = 0;
  if (a.pruned)
    for (int t = 0; t < g; ++t) pruned_bits |= (a.pruned[first + t] ? 1u : 0u) << t;
  if (g == 1) {
    const float w = a.weight[first];
    const float fqq = blk[block_offset(a.B, a.packed, i0, i0)];
    a.out[q] = pruned_bits ? neg_inf() : w * w / (2.0f * fqq);
    return;
  }
  float A[MAX_GROUP * MAX_GROUP];
  float w[MAX_GROUP];
  if (a.n_prune == 0) {  // block: the whole group
    if (pruned_bits == (1u << g) - 1u) {
      a.out[q] = neg_inf();
      return;
    }
    for (int r = 0; r < g; ++r) {
      w[r] = a.weight[first + r];
      for (int c = 0; c < g; ++c) A[r * MAX_GROUP + c] = blk[block_offset(a.B, a.packed, i0 + r, i0 + c)];
    }
    a.out[q] = small_quad_inverse(g, A, w);
    return;
  }
  // N:M: one score per N-subset, with the already-pruned rules of ops/scores.py.
  int num_pruned = 0;
  for (int t = 0; t < g; ++t) num_pruned += (pruned_bits >> t) & 1u;
  const bool saturated = num_pruned >= a.n_prune;
  for (int c = 0; c < a.num_subsets; ++c) {
    const unsigned bits = (unsigned)a.subset_bits[c];
    float* dst = a.out + q * a.num_subsets + c;
    if (saturated) {
      *dst = (bits & ~pruned_bits) == 0u ? neg_inf() : pos_inf();
      continue;
    }
    if ((pruned_bits & ~bits) != 0u) {  // would revive a pruned weight
      *dst = pos_inf();
      continue;
    }
    int idx[MAX_GROUP];
    int n = 0;
    for (int t = 0; t < g; ++t)
      if ((bits >> t) & 1u) idx[n++] = t;
    for (int r = 0; r < n; ++r) {
      w[r] = a.weight[first + idx[r]];
      for (int s = 0; s < n; ++s)
        A[r * MAX_GROUP + s] = blk[block_offset(a.B, a.packed, i0 + idx[r], i0 + idx[s])];
    }
    *dst = small_quad_inverse(n, A, w);
  }
}

// ---------------------------------------------------------------------------------
// Weight update (SPEC §2c): one warp per Fisher block, its vectors in shared memory.
// Phases below take (lane, lanes) and touch only what that lane owns, reading only what
// an earlier phase finished, so running the lanes one after another (the CPU harness)
// computes what the warp computes between two __syncwarp()s.

enum UpdateMode { UPDATE_OBS = 0, UPDATE_JOINT = 1, UPDATE_NONE = 2 };

struct UpdateBlock {
  const float* blk;  // this block's F⁻¹ (either layout)
  bool packed;
  int B;
  int nv;            // valid weights in this block (≤ B; the rest is padding)
  int group;         // 1, 4 or M
  // shared-memory work arrays (B floats / ints each, A: B·B floats for "joint")
  float* w;
  unsigned char* mask;
  float* v;
  int* idx;          // indices of the pruned weights, ascending
  float* A;          // F⁻¹_PP and then its Cholesky factor (lower), leading dimension B
  float* diag;       // the factor's diagonal
  float* y;          // the triangular solves' work vector

  OBK_HD float F(int i, int j) const { return blk[block_offset(B, packed, i, j)]; }
};

OBK_HD void update_load(const UpdateBlock& u, const float* weight, const unsigned char* prune, int lane, int lanes) {
  for (int i = lane; i < u.B; i += lanes) {
    u.w[i] = i < u.nv ? weight[i] : 0.0f;
    u.mask[i] = i < u.nv ? prune[i] : 0;
    u.v[i] = 0.0f;
  }
}

// One lane: the ascending list of pruned indices; returns how many.
OBK_HD int update_collect(const UpdateBlock& u) {
  int n = 0;
  for (int i = 0; i < u.B; ++i)
    if (u.mask[i]) u.idx[n++] = i;
  return n;
}

// "obs": v_Q = ([F⁻¹]_SS)⁻¹ w_S on each group's pruned members S (single weights: w_q / F_qq).
OBK_HD void update_obs_groups(const UpdateBlock& u, int lane, int lanes) {
  const int g = u.group;
  for (int q = lane; q < u.B / g; q += lanes) {
    int idx[MAX_GROUP];
    int n = 0;
    for (int t = 0; t < g; ++t)
      if (u.mask[q * g + t]) idx[n++] = q * g + t;
    if (n == 0) continue;
    float A[MAX_GROUP * MAX_GROUP];
    float x[MAX_GROUP];
    for (int r = 0; r < n; ++r) {
      x[r] = u.w[idx[r]];
      for (int s = 0; s < n; ++s) A[r * MAX_GROUP + s] = u.F(idx[r], idx[s]);
    }
    small_solve(n, A, x);
    for (int r = 0; r < n; ++r) u.v[idx[r]] = x[r];
  }
}

// "joint": A = [F⁻¹]_PP (n×n), rows split over the lanes.
OBK_HD void joint_gather(const UpdateBlock& u, int n, int lane, int lanes) {
  for (int r = lane; r < n; r += lanes)
    for (int s = 0; s < n; ++s) u.A[r * u.B + s] = u.F(u.idx[r], u.idx[s]);
}

// Right-looking Cholesky, step k, part 1: column k below the diagonal (the caller has
// checked that the pivot is positive; every lane reads the same pivot, lane 0 keeps √pivot).
OBK_HD void joint_chol_column(const UpdateBlock& u, int n, int k, int lane, int lanes) {
  const float d = sqrtf(u.A[k * u.B + k]);
  if (lane == 0) u.diag[k] = d;
  for (int i = k + 1 + lane; i < n; i += lanes) u.A[i * u.B + k] /= d;
}

// Step k, part 2: the trailing lower triangle, one row per lane.
OBK_HD void joint_chol_trailing(const UpdateBlock& u, int n, int k, int lane, int lanes) {
  for (int i = k + 1 + lane; i < n; i += lanes) {
    const float lik = u.A[i * u.B + k];
    for (int j = k + 1; j <= i; ++j) u.A[i * u.B + j] -= lik * u.A[j * u.B + k];
  }
}

// Forward solve L y = w_P, step k: y_k (kept in v[idx[k]]), then the rows below it.
// u.y holds the right-hand side as reduced so far; no lane writes what another reads.
OBK_HD void joint_forward(const UpdateBlock& u, int n, int k, int lane, int lanes) {
  const float yk = u.y[k] / u.diag[k];
  for (int i = k + 1 + lane; i < n; i += lanes) u.y[i] -= u.A[i * u.B + k] * yk;
  if (lane == 0) u.v[u.idx[k]] = yk;
}

// Backward solve Lᵀ x = y, step k (descending): x_k (kept in y[k]), then the rows above.
OBK_HD void joint_backward(const UpdateBlock& u, int k, int lane, int lanes) {
  const float xk = u.v[u.idx[k]] / u.diag[k];
  for (int i = lane; i < k; i += lanes) u.v[u.idx[i]] -= u.A[k * u.B + i] * xk;
  if (lane == 0) u.y[k] = xk;
}

// v_P ← x after the backward solve.
OBK_HD void joint_finish(const UpdateBlock& u, int n, int lane, int lanes) {
  for (int r = lane; r < n; r += lanes) u.v[u.idx[r]] = u.y[r];
}

OBK_HD void joint_rhs(const UpdateBlock& u, int n, int lane, int lanes) {
  for (int r = lane; r < n; r += lanes) u.y[r] = u.w[u.idx[r]];
}

// w ← w − F⁻¹ v on the valid weights, pruned ones set to exactly 0; v is nonzero only on P.
OBK_HD void update_apply(const UpdateBlock& u, int n, float* weight, int lane, int lanes, bool compensate) {
  for (int i = lane; i < u.nv; i += lanes) {
    float wi = u.w[i];
    if (compensate) {
      float delta = 0.0f;
      for (int r = 0; r < n; ++r) delta = fmaf(u.F(i, u.idx[r]), u.v[u.idx[r]], delta);
      wi -= delta;
    }
    weight[i] = u.mask[i] ? 0.0f : wi;
  }
}

// ---------------------------------------------------------------------------------
// Programs: the phase sequences of the kernels, written once against a runner.
//
// A runner provides
//   each(f)        f(tid, state) for every thread (on the GPU: this thread, its registers)
//   barrier()      __syncthreads() / __syncwarp() (the CPU runner finishes every thread's
//                  phase before the next one anyway)
//   reduce_partials(...)  the Woodbury kernel's segmented warp-shuffle sum (CPU: a loop)
// so the CPU harness executes exactly these phases, index maps and shared-memory layouts.

struct WoodburyArgs {
  float* finv;          // (num_blocks, B, B) or (num_blocks, B(B+1)/2) float32, in place
  long long num_blocks;
  int B;
  bool packed;
  const float* grads;   // element (block b, gradient t, coordinate j) at b·stride_block + t·stride_grad + j
  long long stride_block;
  long long stride_grad;
  long long d_valid;    // coordinates b·B + j ≥ d_valid read as 0 (row layout's last block)
  int k;                // gradients in this chunk
  float num_grads;      // m
};

template <int BP, int R>
struct WoodburyThread {
  WoodburyRows<BP, R> rows;
  float u[R];
  float part;
};

// The segmented warp sum of gᵀu partials. Thread tid belongs to Fisher block
// seg_key = tid / T of its CTA (threads past P·T form one idle segment, key P). Each
// warp sums every segment's values within itself by a shuffle-down tree: at offset off
// (1, 2, 4, 8, 16) lane l adds lane l+off's running value when seg_take says so; the
// first lane of each segment within the warp (seg_head) then holds the segment's sum
// and stores it at seg_slot. The GPU runner does this with __shfl_down_sync, the CPU
// runner with arrays, both through these functions.
OBK_HD int seg_key(int tid, int T, int P) { return tid / T < P ? tid / T : P; }

OBK_HD bool seg_take(int tid, int off, int T, int P) {
  return (tid & 31) + off < 32 && seg_key(tid + off, T, P) == seg_key(tid, T, P);
}

OBK_HD bool seg_head(int tid, int T, int P) {
  return (tid & 31) == 0 || seg_key(tid - 1, T, P) != seg_key(tid, T, P);
}

// Where a head's sum goes: block·W + (its warp − the block's first warp); −1 for the idle segment.
OBK_HD int seg_slot(int tid, int T, int P, int W) {
  const int key = seg_key(tid, T, P);
  return key < P ? key * W + ((tid >> 5) - ((key * T) >> 5)) : -1;
}

// Floats of shared memory the Woodbury program uses: g [2][P][KC][BP], u [2][P][BP], partials [2][P][W].
OBK_HD long long woodbury_smem_floats(const WoodburyConfig& c) {
  return 2LL * c.blocks_per_cta * (WOODBURY_SUBCHUNK * c.BP + c.BP + c.max_warps);
}

// Threads tid with tid / T == fb_local own a Fisher block; the rest of the CTA idles
// through the barriers. Partials of gᵀu: part_sh[fb_local·W + w] for each warp w the
// block touches (w counted from the block's first warp), summed in order: deterministic.
template <int BP, int R, class Cta>
OBK_HD void woodbury_program(Cta& cta, const WoodburyArgs& a, long long cta_index, float* smem) {
  const WoodburyConfig c = woodbury_config(a.B, R);
  const int T = c.T, P = c.blocks_per_cta, W = c.max_warps, KC = WOODBURY_SUBCHUNK;
  float* g_sh = smem;
  float* u_sh = g_sh + 2 * P * KC * BP;
  float* part_sh = u_sh + 2 * P * BP;
  const long long first_block = cta_index * P;
  const int num_sub = (a.k + KC - 1) / KC;

  auto stage = [&](int tid, int sub) {  // gradients [sub·KC, sub·KC + KC) into buffer sub & 1
    float* dst = g_sh + (sub & 1) * P * KC * BP;
    // unroll 1 here and on the gradient loops: unrolled copies cost ~60 registers (ptxas -v)
#pragma unroll 1
    for (int e = tid; e < P * KC * BP; e += c.threads) {
      const int fl = e / (KC * BP), t = (e / BP) % KC, j = e % BP;
      const long long b = first_block + fl;
      const int gt = sub * KC + t;
      float v = 0.0f;
      if (b < a.num_blocks && gt < a.k && j < a.B && b * a.B + j < a.d_valid)
        v = a.grads[b * a.stride_block + (long long)gt * a.stride_grad + j];
      dst[e] = v;
    }
  };

  // F⁻¹ in: the CTA's blocks are consecutive in memory, copied window by window.
  const long long bs = block_stride(a.B, a.packed);
  const long long own_blocks = a.num_blocks - first_block < P ? a.num_blocks - first_block : P;
  const int total = (int)(own_blocks * bs), window = (int)woodbury_smem_floats(c);
  float* const cta_finv = a.finv + first_block * bs;
  cta.each([&](int, WoodburyThread<BP, R>& st) { st.rows.clear(); });
#pragma unroll 1
  for (int x0 = 0; x0 < total; x0 += window) {
    const int len = total - x0 < window ? total - x0 : window;
    cta.each([&](int tid, WoodburyThread<BP, R>&) {
      for (int e = tid; e < len; e += c.threads) smem[e] = cta_finv[x0 + e];
    });
    cta.barrier();
    cta.each([&](int tid, WoodburyThread<BP, R>& st) {
      const int fl = tid / T;
      if (fl < own_blocks) st.rows.gather(smem, x0, len, fl * (int)bs, a.B, a.packed, tid % T, T);
    });
    cta.barrier();
  }
  cta.each([&](int tid, WoodburyThread<BP, R>&) {
    for (int e = tid; e < 2 * P * BP; e += c.threads) u_sh[e] = 0.0f;  // padding of u stays 0
    stage(tid, 0);
  });
  cta.barrier();

  int t_global = 0;
#pragma unroll 1
  for (int sub = 0; sub < num_sub; ++sub) {
    if (sub + 1 < num_sub)  // prefetch: that buffer's last readers passed a barrier already
      cta.each([&](int tid, WoodburyThread<BP, R>&) { stage(tid, sub + 1); });
    const int in_sub = a.k - sub * KC < KC ? a.k - sub * KC : KC;
#pragma unroll 1
    for (int t = 0; t < in_sub; ++t, ++t_global) {
      const int par = t_global & 1;  // u and partials double-buffered: one barrier per gradient
      cta.each([&](int tid, WoodburyThread<BP, R>& st) {
        const int fl = tid / T, lt = tid % T;
        st.part = 0.0f;
        if (fl >= P) return;
        const float* g = g_sh + (((sub & 1) * P + fl) * KC + t) * BP;
        st.rows.matvec(g, st.u);
        st.part = WoodburyRows<BP, R>::partial(g, st.u, a.B, lt, T);
        float* u_dst = u_sh + (par * P + fl) * BP;
#pragma unroll
        for (int s = 0; s < R; ++s) {
          const int i = WoodburyRows<BP, R>::row(lt, T, s);
          if (i < a.B) u_dst[i] = st.u[s];
        }
      });
      cta.reduce_partials(T, P, W, part_sh + par * P * W);
      cta.barrier();
      cta.each([&](int tid, WoodburyThread<BP, R>& st) {
        const int fl = tid / T;
        if (fl >= P) return;
        const int warps = ((fl * T + T - 1) >> 5) - ((fl * T) >> 5) + 1;
        float denom = a.num_grads;
        for (int w = 0; w < warps; ++w) denom += part_sh[(par * P + fl) * W + w];
        st.rows.rank1(u_sh + (par * P + fl) * BP, st.u, denom);
      });
    }
  }
  // F⁻¹ out, window by window (the barrier first: the last rank-1 update still reads u_sh).
  cta.barrier();
#pragma unroll 1
  for (int x0 = 0; x0 < total; x0 += window) {
    const int len = total - x0 < window ? total - x0 : window;
    cta.each([&](int tid, WoodburyThread<BP, R>& st) {
      const int fl = tid / T;
      if (fl < own_blocks) st.rows.scatter(smem, x0, len, fl * (int)bs, a.B, a.packed, tid % T, T);
    });
    cta.barrier();
    cta.each([&](int tid, WoodburyThread<BP, R>&) {
      for (int e = tid; e < len; e += c.threads) cta_finv[x0 + e] = smem[e];
    });
    cta.barrier();
  }
}

// Calls f(integral_constant<BP>, integral_constant<R>) for the instantiation serving
// (B, rows); rows = 0 takes woodbury_default_rows(B). False when there is none:
// B outside 1..MAX_WOODBURY_B, or rows = 2 outside 32 < B ≤ 64.
template <class F>
bool woodbury_dispatch(int B, int rows, F&& f) {
  if (B < 1 || B > MAX_WOODBURY_B) return false;
  if (rows == 0) rows = woodbury_default_rows(B);
  if (rows != 1 && !(rows == 2 && B > 32 && B <= 64)) return false;
  const WoodburyConfig c = woodbury_config(B, rows);
#define OBK_CASE(bp, r)                                                                   \
  if (c.BP == bp && c.R == r) {                                                           \
    f(std::integral_constant<int, bp>{}, std::integral_constant<int, r>{});               \
    return true;                                                                          \
  }
  OBK_CASE(4, 1) OBK_CASE(8, 1) OBK_CASE(12, 1) OBK_CASE(16, 1)
  OBK_CASE(20, 1) OBK_CASE(24, 1) OBK_CASE(28, 1) OBK_CASE(32, 1)
  OBK_CASE(36, 1) OBK_CASE(40, 1) OBK_CASE(44, 1) OBK_CASE(48, 1)
  OBK_CASE(52, 1) OBK_CASE(56, 1) OBK_CASE(60, 1) OBK_CASE(64, 1)
  OBK_CASE(36, 2) OBK_CASE(40, 2) OBK_CASE(44, 2) OBK_CASE(48, 2)
  OBK_CASE(52, 2) OBK_CASE(56, 2) OBK_CASE(60, 2) OBK_CASE(64, 2)
  OBK_CASE(72, 1) OBK_CASE(80, 1) OBK_CASE(88, 1) OBK_CASE(96, 1)
  OBK_CASE(104, 1) OBK_CASE(112, 1) OBK_CASE(120, 1) OBK_CASE(128, 1)
#undef OBK_CASE
  return false;
}

// Shared memory of one update warp, in this order: w, v, diag, y (B floats each),
// idx (B + 1 ints; idx[B] is the count), A (B·B floats, "joint" only), mask (B bytes).
OBK_HD long long update_smem_bytes(int B, int mode) {
  const long long a_floats = mode == UPDATE_JOINT ? (long long)B * B : 0;
  return (4LL * B + (B + 1) + a_floats) * 4 + (B + 3) / 4 * 4;
}

OBK_HD UpdateBlock update_block_layout(unsigned char* smem, const float* blk, bool packed, int B, int nv, int group, int mode) {
  UpdateBlock u;
  u.blk = blk;
  u.packed = packed;
  u.B = B;
  u.nv = nv;
  u.group = group;
  float* f = reinterpret_cast<float*>(smem);
  u.w = f;
  u.v = f + B;
  u.diag = f + 2 * B;
  u.y = f + 3 * B;
  u.idx = reinterpret_cast<int*>(f + 4 * B);
  u.A = reinterpret_cast<float*>(u.idx + B + 1);
  u.mask = reinterpret_cast<unsigned char*>(u.A + (mode == UPDATE_JOINT ? B * B : 0));
  return u;
}

// One Fisher block's update by one warp (runner: each(f) runs f(lane, lanes) on every
// lane, barrier() is __syncwarp()). Returns false when the joint system is not positive
// definite in float32: the block's weights are then left untouched for the caller.
template <class Warp>
OBK_HD bool update_program(Warp& warp, UpdateBlock& u, float* weight, const unsigned char* prune, int mode) {
  warp.each([&](int lane, int lanes) { update_load(u, weight, prune, lane, lanes); });
  warp.barrier();
  warp.each([&](int lane, int) {
    if (lane == 0) u.idx[u.B] = update_collect(u);
  });
  warp.barrier();
  const int n = u.idx[u.B];
  if (n == 0) return true;  // nothing pruned in this block: nothing changes
  if (mode == UPDATE_OBS) {
    warp.each([&](int lane, int lanes) { update_obs_groups(u, lane, lanes); });
    warp.barrier();
  } else if (mode == UPDATE_JOINT) {
    warp.each([&](int lane, int lanes) {
      joint_gather(u, n, lane, lanes);
      joint_rhs(u, n, lane, lanes);
    });
    warp.barrier();
    for (int k = 0; k < n; ++k) {
      if (!(u.A[k * u.B + k] > 0.0f)) return false;  // the same pivot on every lane
      warp.each([&](int lane, int lanes) { joint_chol_column(u, n, k, lane, lanes); });
      warp.barrier();
      warp.each([&](int lane, int lanes) { joint_chol_trailing(u, n, k, lane, lanes); });
      warp.barrier();
    }
    for (int k = 0; k < n; ++k) {
      warp.each([&](int lane, int lanes) { joint_forward(u, n, k, lane, lanes); });
      warp.barrier();
    }
    for (int k = n - 1; k >= 0; --k) {
      warp.each([&](int lane, int lanes) { joint_backward(u, k, lane, lanes); });
      warp.barrier();
    }
    warp.each([&](int lane, int lanes) { joint_finish(u, n, lane, lanes); });
    warp.barrier();
  }
  warp.each([&](int lane, int lanes) { update_apply(u, n, weight, lane, lanes, mode != UPDATE_NONE); });
  return true;
}

}  // namespace obk
