// CPU kernels of the direct Fisher build (SPEC §2a): the chunk accumulation and the blocked
// inversion, float32 storage, AVX2 + FMA, threaded over blocks (torch's OpenMP threads where the
// module's OpenMP is torch's runtime, else std::thread; see parallel_ranges).
// pybind11 binding of raw host pointers (as the CUDA binding): no torch headers, so it builds
// in seconds; obert_kernels/ops/backends/cpp/ checks every argument before calling in.
//
// The accumulation has two kernels in each instruction set: padded Gram tiles for full blocks and
// an in-place one for the upper triangles (add_upper_avx2 / add_upper_avx512, the pruner's flush).
// The AVX2/FMA code is compiled by the pragma below, the AVX-512F/VL code by a second one, the rest
// of the module for the baseline x86-64: `supported()` asks the CPU before anything AVX2 runs,
// `avx512_supported()` before the AVX-512 code does.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace py = pybind11;

namespace obk_cpu {

bool supported() {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  return false;
#endif
}

// Whether parallel_ranges runs on the OpenMP runtime's threads (set by the Python side once it
// has checked that this module and torch share one runtime: then the threads are torch's own).
static std::atomic<bool> use_openmp{false};

bool openmp_built() {
#ifdef _OPENMP
  return true;
#else
  return false;
#endif
}

// Where this module resolved omp_get_num_threads (0 without OpenMP): the Python side compares it
// with where torch's libraries resolve it, to know whether the runtime (and its threads) is torch's.
uintptr_t openmp_symbol() {
#ifdef _OPENMP
  return reinterpret_cast<uintptr_t>(&omp_get_num_threads);
#else
  return 0;
#endif
}

void set_openmp(bool on) { use_openmp.store(on && openmp_built()); }

bool openmp_on() { return use_openmp.load(); }

// Run fn(begin, end) over [0, n) in `threads` contiguous ranges, each a multiple of `align`.
// On torch's OpenMP threads where it can: after a torch op, libgomp's idle worker spins on its
// core for milliseconds, and two fresh std::threads then shared the cores with it. The one-pass
// copy of MiniLM's gradient (2 threads, 2026-12-01, see copy_rows) took 11.5 ms on torch's
// threads against 17.2 on its own, and 12.5 on its own with OMP_WAIT_POLICY=PASSIVE (nobody
// spinning); the accumulation of a Fisher build at d = 10⁶, m = 1024 (bench/bench_pruner_cpu.py,
// five runs each, alternated) 1.39-1.58 s against 1.66-1.81 s (one outlier at 1.89).
template <class Fn>
void parallel_ranges(int64_t n, int threads, int64_t align, Fn fn) {
  const int64_t units = (n + align - 1) / align;
  const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(threads, units));
  auto part = [&](int64_t p) {
    const int64_t begin = std::min(n, units * p / parts * align), end = std::min(n, units * (p + 1) / parts * align);
    if (begin < end) fn(begin, end);
  };
  if (parts == 1) {
    fn(int64_t{0}, n);
    return;
  }
#ifdef _OPENMP
  if (use_openmp.load()) {
#pragma omp parallel num_threads((int)parts)
    for (int64_t p = omp_get_thread_num(); p < parts; p += omp_get_num_threads()) part(p);
    return;
  }
#endif
  std::vector<std::thread> pool;
  for (int64_t p = 0; p < parts; ++p) pool.emplace_back(part, p);
  for (auto& t : pool) t.join();
}

#if defined(__x86_64__) || defined(__i386__)  // elsewhere supported() is false and nothing below runs
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#endif

typedef float f8 __attribute__((vector_size(32)));
typedef double d4 __attribute__((vector_size(32)));

static inline f8 load8(const float* p) { f8 v; std::memcpy(&v, p, 32); return v; }
static inline void store8(float* p, f8 v) { std::memcpy(p, &v, 32); }
static inline f8 splat8(float x) { return f8{x, x, x, x, x, x, x, x}; }

// acc(rows r0..r0+3, cols c0..c0+8·NV) = Σ_i g[i][r] g[i][c] over the k rows of g (k × ld).
template <int NV>
static void gram_tile(const float* g, int k, int ld, int r0, int c0, float* out) {
  f8 acc[4][NV] = {};
  for (int i = 0; i < k; ++i) {
    const float* row = g + (int64_t)i * ld;
    f8 x[NV];
    for (int v = 0; v < NV; ++v) x[v] = load8(row + c0 + 8 * v);
    for (int r = 0; r < 4; ++r) {
      const f8 b = splat8(row[r0 + r]);
      for (int v = 0; v < NV; ++v) acc[r][v] += b * x[v];
    }
  }
  for (int r = 0; r < 4; ++r)
    for (int v = 0; v < NV; ++v) store8(out + (int64_t)(r0 + r) * ld + c0 + 8 * v, acc[r][v]);
}

// A Fisher block's rows as the in-place kernels address them: row r's entry c at f + off[r] + c.
// Dense (B × B): off[r] = r·B. Packed upper triangles (ops/packed.py): row r holds its entries
// c ≥ r from r·B − r(r−1)/2 on, so off[r] = that − r (entries c < r of row r are not its own).
struct BlockRows {
  float* f;
  const int64_t* off;
  int B;
  float* row(int r) const { return f + off[r]; }
};

// The cache lines of a coming block (its k gradient rows, then its Fisher block), asked for a
// few at a time between the tiles of the current one: all at once, they filled the core's miss
// buffers and stalled it (perf: ~14% of the kernel's samples on the prefetch loop, 2026-11-30).
struct Prefetcher {
  const char* row = nullptr;     // the coming block's current gradient row
  const char* fisher = nullptr;  // its Fisher block's next line
  int64_t row_bytes = 0, row_lines = 0;
  int64_t rows_left = 0, line_in_row = 0, fisher_left = 0;

  void plan(const float* f, int64_t fisher_floats, const float* g, int64_t row_stride, int k, int B) {
    row = reinterpret_cast<const char*>(g);
    fisher = reinterpret_cast<const char*>(f);
    row_bytes = (int64_t)sizeof(float) * row_stride;
    row_lines = ((int64_t)sizeof(float) * B + 63) / 64;
    rows_left = k;
    line_in_row = 0;
    fisher_left = ((int64_t)sizeof(float) * fisher_floats + 63) / 64;
  }

  void clear() { rows_left = line_in_row = fisher_left = 0; }

  int64_t size() const { return rows_left * row_lines - line_in_row + fisher_left; }

  // The next n lines, walked with counters: a division per line (line → row, column) took
  // ~20% of the kernel's perf samples on blocks in cache (AVX-512 tiles, 2026-12-01).
  void step(int64_t n) {
    for (; n > 0 && rows_left > 0; --n) {
      __builtin_prefetch(row + 64 * line_in_row, 1, 3);
      if (++line_in_row == row_lines) {
        line_in_row = 0;
        row += row_bytes;
        --rows_left;
      }
    }
    for (; n > 0 && fisher_left > 0; --n, --fisher_left, fisher += 64) __builtin_prefetch(fisher, 1, 3);
  }
};

// Blocks ahead of the one being accumulated whose lines are asked for. Median of 5, ms, one /
// two threads, 2026-11-30 (d = 10⁶, B = 50 | MiniLM's 10.6M weights, B = 32; k = 32): all lines
// of the next block at once 115 / 66 | 692 / 428; spread, 1 ahead 104 / 63 | 676 / 419;
// 2 ahead 82 / 62 | 589 / 378; 4 ahead 85 / 63 | 652 / 390 (torch's baddbmm_, two threads, in another
// run that hour: 63 | 593). On a 2-core Xeon (AVX-512 tiles, 2026-12-01) at MiniLM's size: none 214-217, 1 ahead
// 169-207, 2 ahead 172-190, 4 ahead 173-176 (bench/results/cpu-kernels-ab-2026-12-01.txt).
#ifndef OBK_PREFETCH_AHEAD
#define OBK_PREFETCH_AHEAD 2
#endif
constexpr int64_t PREFETCH_BLOCKS_AHEAD = OBK_PREFETCH_AHEAD;

// The k gradient rows of a block (B values each, `row_stride` apart) into a zero-padded k × P scratch
// (P = B rounded up to 8): the tiles below read whole vectors of it.
static void pad_rows(const float* g, int64_t row_stride, int k, int B, int P, float* gpad) {
  for (int i = 0; i < k; ++i) std::memcpy(gpad + (int64_t)i * P, g + i * row_stride, sizeof(float) * B);
}

// The upper tiles of a block's P × P Gram matrix (gpad's k rows), AVX2: 4-row × 16/8-column tiles.
static void gram_upper_avx2(const float* gpad, int k, int P, float* gram, Prefetcher& ahead) {
  const int64_t per_row = ahead.size() / (P / 4) + 1;  // the coming block's lines spread over the tile rows
  for (int r0 = 0; r0 < P; r0 += 4) {
    int c0 = r0 / 8 * 8;
    for (; c0 + 16 <= P; c0 += 16) gram_tile<2>(gpad, k, P, r0, c0, gram);
    if (c0 < P) gram_tile<1>(gpad, k, P, r0, c0, gram);
    ahead.step(per_row);
  }
}

// fisher_b += scale · gram for one block (its B × B corner), after mirroring the upper tiles into
// the lower triangle: the result is exactly symmetric. upper_only: no mirror, and each row adds its
// entries c ≥ r only (the strict lower triangle is left as it was).
static void add_gram(float* fisher, int B, int P, float scale, bool upper_only, float* gram) {
  if (!upper_only)
    for (int r = 0; r < B; ++r)
      for (int c = r + 1; c < B; ++c) gram[(int64_t)c * P + r] = gram[(int64_t)r * P + c];
  const f8 s = splat8(scale);
  for (int r = 0; r < B; ++r) {
    float* dst = fisher + (int64_t)r * B;
    const float* src = gram + (int64_t)r * P;
    int c = upper_only ? r : 0;
    for (; c + 8 <= B; c += 8) store8(dst + c, load8(dst + c) + s * load8(src + c));
    for (; c < B; ++c) dst[c] += scale * src[c];
  }
}

// ---- AVX2, upper triangles added in place (the pruner's flush) -----------------------------
// add_upper_avx512's scheme in ymm vectors (see there): rows read where they are, the upper
// triangle of [0, M)² (M = B rounded down to 8) in 4-row tiles added straight into F, the T < 8
// tail rows against every column, transposed left of M. AVX2 has no cheap masked store: a
// diagonal vector is blended with what F held (its lower lanes written back unchanged), the
// corner's few entries are added one by one. Ymm FMAs a gradient row at B = 50: 182 against the
// padded tiles' 224; same bits as they give (the same FMA chains, the same final FMA). A chunk of
// k = 32, two threads, medians, alternated builds, on the Xeon with its AVX-512 switched off
// (use_isa("avx2"); not measured on a CPU without AVX-512; 2026-12-01): d = 10⁶, B = 50: 22.3-22.6
// against 28.6-39.0 ms (blocks in cache, one thread: 2.25 µs a block against AVX-512's 1.72);
// MiniLM's size, B = 32: 148-202 against 186-195 ms (AVX-512 in place: 163-197, bound by memory).
template <int R, int NV, bool MASK_LAST, class Add>
static inline __attribute__((always_inline)) void tile8(const float* g, int k, int64_t ld, int r0, int c0,
                                                        __m256i last, Add add) {
  f8 acc[R][NV];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = splat8(0.0f);
  for (int i = 0; i < k; ++i) {
    const float* row = g + (int64_t)i * ld;
    f8 x[NV];
    for (int v = 0; v < NV; ++v)
      x[v] = MASK_LAST && v + 1 == NV ? (f8)_mm256_maskload_ps(row + c0 + 8 * v, last) : load8(row + c0 + 8 * v);
    for (int r = 0; r < R; ++r) {
      const f8 b = splat8(row[r0 + r]);
      for (int v = 0; v < NV; ++v) acc[r][v] = (f8)_mm256_fmadd_ps((__m256)b, (__m256)x[v], (__m256)acc[r][v]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) add(r, v, acc[r][v]);
}

// f[row][c] += s · sums[c − c0] for the 8 columns c of [c0, c0 + 8) (all < B) with c ≥ row.
static inline void add_upper8(const BlockRows& d, int row, int c0, f8 s, f8 sums) {
  if (c0 + 8 <= row) return;
  float* dst = d.row(row) + c0;  // packed: lanes c < row alias other entries, written back unchanged
  const f8 old = load8(dst), sum = (f8)_mm256_fmadd_ps((__m256)s, (__m256)sums, (__m256)old);
  if (row <= c0) return store8(dst, sum);
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256 upper = _mm256_castsi256_ps(_mm256_cmpgt_epi32(lane, _mm256_set1_epi32(row - c0 - 1)));
  store8(dst, (f8)_mm256_blendv_ps((__m256)old, (__m256)sum, upper));
}

// Lanes j of sums, column c0 + j of a tail row: f[c0 + j][row] += s · sums[j] (transposed) for
// c0 + j < M, else (the corner) f[row][c0 + j] for row ≤ c0 + j < B.
static inline void add_tail8(const BlockRows& d, int M, int row, int c0, float s, f8 sums) {
  alignas(32) float lane[8];
  store8(lane, sums);
  for (int j = 0; j < 8 && c0 + j < d.B; ++j) {
    const int c = c0 + j;
    if (c >= M && c < row) continue;
    float* dst = c < M ? d.row(c) + row : d.row(row) + c;
    *dst = __builtin_fmaf(s, lane[j], *dst);
  }
}

template <int NV>
static void upper_tile8(const float* g, int k, int64_t ld, int r0, int c0, const BlockRows& d, f8 s) {
  tile8<4, NV, false>(g, k, ld, r0, c0, __m256i{},
                      [&](int r, int v, f8 sums) { add_upper8(d, r0 + r, c0 + 8 * v, s, sums); });
}

// Tail rows r0..r0+R−1 (≥ M) against every column [0, M + 8); the corner vector's lanes ≥ B read as 0.
template <int R>
static void tail_rows8(const float* g, int k, int64_t ld, int r0, int M, const BlockRows& d, float s) {
  const int B = d.B;
  constexpr int NV = R <= 4 ? 2 : 1;  // 16 ymm registers: R·NV accumulators, NV loads, a broadcast
  const __m256i last = _mm256_cmpgt_epi32(_mm256_set1_epi32(B - M), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  auto add = [&](int c0) { return [&d, M, r0, c0, s](int r, int v, f8 sums) { add_tail8(d, M, r0 + r, c0 + 8 * v, s, sums); }; };
  int c0 = 0;
  for (; c0 + 8 * NV < M + 8; c0 += 8 * NV) tile8<R, NV, false>(g, k, ld, r0, c0, last, add(c0));
  for (; c0 < M + 8; c0 += 8)  // the rest one vector at a time, the last (the corner) masked
    if (c0 < M) tile8<R, 1, false>(g, k, ld, r0, c0, last, add(c0));
    else tile8<R, 1, true>(g, k, ld, r0, c0, last, add(c0));
}

// fisher_b's upper triangle += scale · Σ_i g_i g_iᵀ for one block; g: its k rows, `ld` floats apart.
static void add_upper_avx2(const float* g, int k, int64_t ld, float scale, const BlockRows& d, Prefetcher& ahead) {
  const int B = d.B, M = B / 8 * 8, T = B - M;
  const f8 s = splat8(scale);
  const int64_t per_tile_row = ahead.size() / (M / 4 + 1) + 1;
  for (int r0 = 0; r0 < M; r0 += 4) {
    int c0 = r0 / 8 * 8;
    for (; c0 + 16 <= M; c0 += 16) upper_tile8<2>(g, k, ld, r0, c0, d, s);
    if (c0 < M) upper_tile8<1>(g, k, ld, r0, c0, d, s);
    ahead.step(per_tile_row);
  }
  switch (T) {
    case 0: break;
    case 1: tail_rows8<1>(g, k, ld, M, M, d, scale); break;
    case 2: tail_rows8<2>(g, k, ld, M, M, d, scale); break;
    case 3: tail_rows8<3>(g, k, ld, M, M, d, scale); break;
    case 4: tail_rows8<4>(g, k, ld, M, M, d, scale); break;
    case 5: tail_rows8<5>(g, k, ld, M, M, d, scale); break;
    case 6: tail_rows8<6>(g, k, ld, M, M, d, scale); break;
    default: tail_rows8<7>(g, k, ld, M, M, d, scale); break;
  }
  ahead.step(per_tile_row);
}

// Σ_q x[q·xs] y[q·ys], q < n, lane-wise, in four partial sums instead of one chain of dependent
// FMAs. ops.fisher_invert, two threads, medians of 7, four alternated runs each (2026-12-01, Xeon,
// bench/results/cpu-kernels-ab-2026-12-01.txt): 20,000 blocks of 50×50 181-191 → 150 ms, 8,192 of
// 32×32 22-23 → 20 ms; the largest relative error against float64 unchanged (5.5e-8).
static inline d4 dot_lanes(const d4* x, int64_t xs, const d4* y, int64_t ys, int n) {
  d4 s0 = {0.0, 0.0, 0.0, 0.0}, s1 = s0, s2 = s0, s3 = s0;
  int q = 0;
  for (; q + 4 <= n; q += 4) {
    s0 += x[q * xs] * y[q * ys];
    s1 += x[(q + 1) * xs] * y[(q + 1) * ys];
    s2 += x[(q + 2) * xs] * y[(q + 2) * ys];
    s3 += x[(q + 3) * xs] * y[(q + 3) * ys];
  }
  for (; q < n; ++q) s0 += x[q * xs] * y[q * ys];
  return (s0 + s1) + (s2 + s3);
}

// Four blocks at once, one per double lane: a[i][j] lane l = block l's (i, j), lower triangle.
// Cholesky a = L Lᵀ (the diagonal keeps 1/L_jj), then L⁻¹ in place, then (L⁻¹)ᵀ L⁻¹.
// Returns the lanes whose pivot was not positive (or NaN).
static int invert_lanes(d4* a, int B) {
  int bad = 0;
  for (int j = 0; j < B; ++j) {
    d4 d = a[j * B + j] - dot_lanes(a + j * B, 1, a + j * B, 1, j);
    for (int l = 0; l < 4; ++l)
      if (!(d[l] > 0.0)) { bad |= 1 << l; d[l] = 1.0; }
    d4 r;
    for (int l = 0; l < 4; ++l) r[l] = 1.0 / std::sqrt(d[l]);
    a[j * B + j] = r;
    for (int i = j + 1; i < B; ++i) a[i * B + j] = (a[i * B + j] - dot_lanes(a + i * B, 1, a + j * B, 1, j)) * r;
  }
  for (int j = 0; j < B; ++j)  // column j of X = L⁻¹: X_ij = -(Σ_{q=j}^{i-1} L_iq X_qj) / L_ii
    for (int i = j + 1; i < B; ++i) {
      const d4 s = a[i * B + j] * a[j * B + j] + dot_lanes(a + i * B + j + 1, 1, a + (j + 1) * B + j, B, i - j - 1);
      a[i * B + j] = -s * a[i * B + i];
    }
  return bad;
}

// Blocks [b, b + lanes) ← (F + λI)⁻¹ through float64; a block whose factorization fails is
// left as it was and its index written to failed[*num_failed++].
// Blocks b..b+lanes−1 of fisher inverted, four at a time in the double lanes of a. Dense blocks:
// the lower triangles read, both written; packed (upper triangles, `upper` = row offsets as in
// BlockRows): entry (i, j), j ≤ i, read and written as its mirror (j, i).
static void invert_group(float* fisher, const int64_t* upper, int64_t b, int lanes, int B, double damp, d4* a,
                         int64_t* failed, int64_t* num_failed) {
  const int64_t floats = upper ? (int64_t)B * (B + 1) / 2 : (int64_t)B * B;
  // (i, j), i ≥ j, is read from the upper triangle, (j, i), packed or dense: the two storages give the
  // same bits even where a dense F is not bit-symmetric (torch's batched GEMM on an AMD EPYC, 2026-12-01,
  // left B = 17, 24, 33 and 50 blocks asymmetric in the last bit); the pruner's flush writes the upper one.
  // Read along its rows: as fast as the lower read (20,000 blocks of 50: 80-83 against 82-84 ms; down
  // the columns 88 ms), packed 72 against 75 ms (bench/results/cpu-invert-upper-read-ab-2026-12-01.txt)
  auto at = [=](int64_t blk, int i, int j) { return fisher + blk * floats + (upper ? upper[j] + i : (int64_t)j * B + i); };
  for (int l = 0; l < 4; ++l)  // along the stored upper rows: (j, i) for i ≥ j
    for (int j = 0; j < B; ++j)
      for (int i = j; i < B; ++i) a[i * B + j][l] = l < lanes ? (double)*at(b + l, i, j) : (double)(i == j);
  for (int i = 0; i < B; ++i) a[i * B + i] += d4{damp, damp, damp, damp};
  const int bad = invert_lanes(a, B);
  for (int i = 0; i < B; ++i)
    for (int j = 0; j <= i; ++j) {
      const d4 s = dot_lanes(a + i * B + i, B, a + i * B + j, B, B - i);
      for (int l = 0; l < lanes; ++l) {
        if (bad >> l & 1) continue;
        *at(b + l, i, j) = (float)s[l];
        if (!upper) *at(b + l, j, i) = (float)s[l];
      }
    }
  for (int l = 0; l < lanes; ++l)
    if (bad >> l & 1) failed[(*num_failed)++] = b + l;
}

// One gradient tensor into its rows of the block buffer, in one pass: src (n floats) → block b's B
// values at dst + b·block_stride, the last block partly (its padding is never written); keep
// (n bytes, or null): 0 writes +0.0 (all bits clear, as masked_fill wrote). Returns whether every
// source value was finite, the pruned ones included (v − v is NaN exactly for NaN and ±inf).
template <bool STREAM>
static bool copy_tensor_rows(const float* src, const uint8_t* keep, int64_t n, float* dst, int64_t block_stride,
                             int B, int64_t block_begin, int64_t block_end) {
  f8 acc = splat8(0.0f);
  float tail_acc = 0.0f;
  for (int64_t b = block_begin; b < block_end; ++b) {
    const float* s = src + b * B;
    float* d = dst + b * block_stride;
    const int len = (int)std::min<int64_t>(B, n - b * B);
    int c = 0;
    for (; c + 8 <= len; c += 8) {
      f8 v = load8(s + c);
      acc += v - v;
      if (keep) {  // 8 keep bytes → 8 lanes of all-ones / all-zeros
        const __m256i on = _mm256_cmpgt_epi32(
            _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(keep + b * B + c))),
            _mm256_setzero_si256());
        v = (f8)_mm256_and_ps((__m256)v, _mm256_castsi256_ps(on));
      }
      if (STREAM)  // d + c is 32-byte aligned: the caller checked the row starts
        _mm256_stream_ps(d + c, (__m256)v);
      else
        store8(d + c, v);
    }
    for (; c < len; ++c) {
      const float v = s[c];
      tail_acc += v - v;
      d[c] = (keep && !keep[b * B + c]) ? 0.0f : v;
    }
  }
  if (STREAM) _mm_sfence();  // the streamed rows visible before the flush reads them
  bool finite = tail_acc == 0.0f;
  for (int l = 0; l < 8; ++l) finite = finite && acc[l] == 0.0f;
  return finite;
}

#if defined(__x86_64__) || defined(__i386__)
#pragma GCC pop_options
#endif

// ---- AVX-512 (where the CPU has it: avx512_supported) --------------------------------------
#if defined(__x86_64__) || defined(__i386__)
#pragma GCC push_options
#pragma GCC target("avx2,fma,avx512f,avx512vl")
#endif

// acc(rows r0..r0+R−1, cols c0..c0+W·NV) = Σ_i g[i][r] g[i][c] over the k rows of g (k × ld), in
// vectors of W floats (16: zmm, 8: ymm). The order of the sums is gram_tile's: every entry is the
// same chain of fused multiply-adds over i, so both ISAs give the same bits.
// A template of its own rather than gram_tile's: GCC compiles a function for the target of the
// pragma region it is defined in, and this one's ymm tile uses AVX-512 encodings (embedded
// broadcasts) that an AVX2-only CPU cannot run.
typedef float f16 __attribute__((vector_size(64)));
template <int W> struct Lanes;
// vbroadcastss from memory: a loop filling the lanes compiled to a ymm broadcast and a vinsert,
// whose shuffle takes the port of the second zmm FMA unit
template <> struct Lanes<16> {
  typedef f16 type;
  static type splat(const float* x) { return (type)_mm512_set1_ps(*x); }
  static type load(const float* p) { return (type)_mm512_loadu_ps(p); }
  static void store(float* p, type v) { _mm512_storeu_ps(p, (__m512)v); }
};
template <> struct Lanes<8> {
  typedef f8 type;
  static type splat(const float* x) { return (type)_mm256_broadcast_ss(x); }
  static type load(const float* p) { return (type)_mm256_loadu_ps(p); }
  static void store(float* p, type v) { _mm256_storeu_ps(p, (__m256)v); }
};

template <int R, int NV, int W>
static void gram_tile_wide(const float* g, int k, int ld, int r0, int c0, float* out) {
  typedef typename Lanes<W>::type vec;
  vec acc[R][NV] = {};
  for (int i = 0; i < k; ++i) {
    const float* row = g + (int64_t)i * ld;
    vec x[NV];
    for (int v = 0; v < NV; ++v) x[v] = Lanes<W>::load(row + c0 + W * v);
    for (int r = 0; r < R; ++r) {
      const vec b = Lanes<W>::splat(row + r0 + r);
      for (int v = 0; v < NV; ++v) acc[r][v] += b * x[v];
    }
  }
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) Lanes<W>::store(out + (int64_t)(r0 + r) * ld + c0 + W * v, acc[r][v]);
}

// Full blocks (upper_only false; the in-place kernel below serves the flush's upper triangles):
// the upper tiles of the P × P Gram matrix with 8-row tiles of zmm columns (16 floats; an 8-wide
// ymm tile where P − c0 = 8): 16 accumulators in the 8 × 32 tiles against 8 in AVX2's 4 × 16, and
// half the tiles. At B = 32 a gradient row costs 48 zmm FMAs (24 cycles on two FMA ports)
// against 80 ymm ones (40 cycles).
static void gram_upper_avx512(const float* gpad, int k, int P, float* gram, Prefetcher& ahead) {
  const int64_t per_row = ahead.size() / (P / 8) + 1;
  for (int r0 = 0; r0 < P; r0 += 8) {  // P is a multiple of 8; rows ≥ B are gpad's zero padding
    int c0 = r0 / 16 * 16;
    for (; c0 + 32 <= P; c0 += 32) gram_tile_wide<8, 2, 16>(gpad, k, P, r0, c0, gram);
    if (c0 + 16 <= P) {
      gram_tile_wide<8, 1, 16>(gpad, k, P, r0, c0, gram);
      c0 += 16;
    }
    if (c0 < P) gram_tile_wide<8, 1, 8>(gpad, k, P, r0, c0, gram);
    ahead.step(per_row);
  }
}

// ---- AVX-512, upper triangles added in place (the pruner's flush) ----------------------------
// The tiles read the gradient rows where they are (a masked load for a row's last partial
// vector: no padded copy) and add scale · their sums straight into the Fisher block under a mask
// (no Gram scratch, no second pass). Blocks are cut at M = B rounded down to 16: the upper
// triangle of [0, M)² in 8-row tiles of zmm columns; the T = B − M tail rows against every
// column, their entries left of M added transposed (F is symmetric: entry (M + t, c) is (c, M + t)),
// the corner under a mask. Zmm FMAs a gradient row at B = 50: 104 against the padded tiles' 152.
// Each entry is the same chain of FMAs over the chunk's rows and the same final FMA as add_gram's,
// so the bits are AVX2's. A chunk of k = 32, two threads, medians, alternated builds (Xeon,
// 2026-12-01): d = 10⁶, B = 50: 19-21 against 27-29 ms (blocks in cache, one thread: 1.74 against
// 2.46 µs a block); MiniLM's 10.6M weights, B = 32: 162-182 against 174-181 ms (bound by memory).
typedef __m512 zmm;

// add(r, v, acc[r][v]) with acc[r][v] = Σ_i g[i][r0 + r] · g[i][c0 + 16v + lane] over the k rows
// of g (`ld` floats apart); the last vector's lanes outside `last` read as 0 (never touched: no
// read past a row's end).
template <int R, int NV, class Add>
static inline __attribute__((always_inline)) void tile(const float* g, int k, int64_t ld, int r0, int c0,
                                                       __mmask16 last, Add add) {
  zmm acc[R][NV];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_setzero_ps();
  for (int i = 0; i < k; ++i) {
    const float* row = g + (int64_t)i * ld;
    zmm x[NV];
    for (int v = 0; v < NV; ++v)
      x[v] = v + 1 < NV ? _mm512_loadu_ps(row + c0 + 16 * v) : _mm512_maskz_loadu_ps(last, row + c0 + 16 * v);
    for (int r = 0; r < R; ++r) {
      const zmm b = _mm512_set1_ps(row[r0 + r]);
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_fmadd_ps(b, x[v], acc[r][v]);
    }
  }
  // unrolled, so that acc is indexed by constants and stays in registers: with a loop here GCC
  // kept acc in memory and stored all of it on every row of the loop above
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) add(r, v, acc[r][v]);
}

// f[row][c] += s · sums[c − c0] for the columns c of [c0, c0 + 16) with row ≤ c < B.
static inline void add_upper(const BlockRows& d, int row, int c0, zmm s, zmm sums) {
  const int B = d.B;
  if (c0 + 16 <= row) return;
  const int skip = row > c0 ? row - c0 : 0, width = std::min(16, B - c0);
  const __mmask16 mask = (__mmask16)(((1u << width) - 1) & (0xFFFFu << skip));
  float* dst = d.row(row) + c0;
  _mm512_mask_storeu_ps(dst, mask, _mm512_fmadd_ps(s, sums, _mm512_maskz_loadu_ps(mask, dst)));
}

// f[c][row] += s · sums[c − c0] for the 16 columns c of [c0, c0 + 16), all left of `row`: the
// lower entries (row, c) of a tail row, added where the upper triangle keeps them.
static inline void add_transposed(const BlockRows& d, int row, int c0, float s, zmm sums) {
  alignas(64) float lane[16];
  _mm512_store_ps(lane, sums);
  for (int j = 0; j < 16; ++j) {
    float* dst = d.row(c0 + j) + row;
    *dst = __builtin_fmaf(s, lane[j], *dst);
  }
}

// Rows r0..r0+7 (all < M) against columns [c0, c0 + 16·NV) (all < M): upper entries only.
template <int NV>
static void upper_tile(const float* g, int k, int64_t ld, int r0, int c0, const BlockRows& d, zmm s) {
  tile<8, NV>(g, k, ld, r0, c0, (__mmask16)0xFFFF,
              [&](int r, int v, zmm sums) { add_upper(d, r0 + r, c0 + 16 * v, s, sums); });
}

// Tail rows r0..r0+R−1 (≥ M) against columns [c0, c0 + 16·NV) of [0, M + 16): columns < M
// transposed, the corner vector [M, M + 16) (its lanes ≥ B read as 0) in place.
template <int R, int NV>
static void tail_tile(const float* g, int k, int64_t ld, int r0, int c0, int M, const BlockRows& d, float s) {
  const __mmask16 last = c0 + 16 * (NV - 1) == M ? (__mmask16)((1u << (d.B - M)) - 1) : (__mmask16)0xFFFF;
  tile<R, NV>(g, k, ld, r0, c0, last, [&](int r, int v, zmm sums) {
    const int cv = c0 + 16 * v;
    if (cv < M) add_transposed(d, r0 + r, cv, s, sums);
    else add_upper(d, r0 + r, cv, _mm512_set1_ps(s), sums);
  });
}

// Tail rows r0..r0+R−1 against every column [0, M + 16), two vectors a tile.
template <int R>
static void tail_rows(const float* g, int k, int64_t ld, int r0, int M, const BlockRows& d, float s) {
  int c0 = 0;
  for (; c0 + 32 <= M + 16; c0 += 32) tail_tile<R, 2>(g, k, ld, r0, c0, M, d, s);
  if (c0 < M + 16) tail_tile<R, 1>(g, k, ld, r0, c0, M, d, s);
}

// Up to 8 tail rows from r0 (R known at compile time: its accumulators stay in registers).
static void tail_rows_of(int R, const float* g, int k, int64_t ld, int r0, int M, const BlockRows& d, float s) {
  switch (R) {
    case 1: return tail_rows<1>(g, k, ld, r0, M, d, s);
    case 2: return tail_rows<2>(g, k, ld, r0, M, d, s);
    case 3: return tail_rows<3>(g, k, ld, r0, M, d, s);
    case 4: return tail_rows<4>(g, k, ld, r0, M, d, s);
    case 5: return tail_rows<5>(g, k, ld, r0, M, d, s);
    case 6: return tail_rows<6>(g, k, ld, r0, M, d, s);
    case 7: return tail_rows<7>(g, k, ld, r0, M, d, s);
    default: return tail_rows<8>(g, k, ld, r0, M, d, s);
  }
}

// fisher_b's upper triangle += scale · Σ_i g_i g_iᵀ for one block; g: its k rows, `ld` floats apart.
static void add_upper_avx512(const float* g, int k, int64_t ld, float scale, const BlockRows& d, Prefetcher& ahead) {
  const int B = d.B, M = B / 16 * 16;
  const zmm s = _mm512_set1_ps(scale);
  const int64_t per_tile_row = ahead.size() / (M / 8 + 2) + 1;
  for (int r0 = 0; r0 < M; r0 += 8) {
    int c0 = r0 / 16 * 16;
    for (; c0 + 32 <= M; c0 += 32) upper_tile<2>(g, k, ld, r0, c0, d, s);
    if (c0 < M) upper_tile<1>(g, k, ld, r0, c0, d, s);
    ahead.step(per_tile_row);
  }
  for (int r0 = M; r0 < B; r0 += 8) {
    tail_rows_of(std::min(8, B - r0), g, k, ld, r0, M, d, scale);
    ahead.step(per_tile_row);
  }
}

#if defined(__x86_64__) || defined(__i386__)
#pragma GCC pop_options
#endif

bool avx512_supported() {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
  __builtin_cpu_init();  // checks the OS saves the zmm state too
  return supported() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl");
#else
  return false;
#endif
}

// Which instruction set the accumulation runs: "auto" where the CPU has AVX-512 (the default; set
// at import), else "avx2"; "avx2" or "avx512" forced by set_isa, for tests and A/B runs.
// auto: the padded tiles of full blocks in AVX-512; the in-place kernel in AVX-512 for B above
// AVX512_IN_PLACE_ABOVE, in AVX2 up to it. A k = 32 chunk, two threads, medians of 15 (5 at
// MiniLM's size), two rounds, AVX2 | AVX-512, dense and packed (Xeon, 2026-12-01), ms:
//   B = 16 (80,000 blocks): 12.3-12.6 | 18.7-18.9, packed 12.1-12.2 | 20.3
//   B = 24, 40, 48: within 0.5 ms of each other, either storage
//   B = 32 (40,000): 20.2-21.3 | 21.8-21.9, packed 17.7-18.1 | 26.5-26.8; MiniLM's 331,776 blocks:
//     154.1-156.1 | 167.3-167.6, packed 137.8-138.8 | 208.3-210.3
//   B = 50 (20,000): 23.3-24.2 | 21.1-21.5, packed 21.3 | 17.1-17.2; 130,000 blocks: 149.7-150.2 |
//     132.9-134.4, packed 130.2-132.1 | 108.1-109.3
//   B = 64 (20,000): 36.5-42.8 | 35.9-46.4, packed 31.1-34.4 | 29.7-30.8
enum Isa { ISA_AVX2 = 0, ISA_AVX512 = 1, ISA_AUTO = 2 };
constexpr int AVX512_IN_PLACE_ABOVE = 32;
static std::atomic<int> isa_mode{avx512_supported() ? ISA_AUTO : ISA_AVX2};

bool set_isa(const std::string& name) {  // "auto" without AVX-512 is AVX2
  if (name != "avx512" && name != "avx2" && name != "auto") return false;
  if (name == "avx512" && !avx512_supported()) return false;
  isa_mode.store(name == "avx2" || !avx512_supported() ? ISA_AVX2 : name == "avx512" ? ISA_AVX512 : ISA_AUTO);
  return true;
}

std::string isa() {
  const int mode = isa_mode.load();
  return mode == ISA_AUTO ? "auto" : mode == ISA_AVX512 ? "avx512" : "avx2";
}

// Whether the in-place kernel (upper triangles) and the padded tiles (full blocks) run AVX-512 for B.
static bool avx512_in_place(int B) {
  const int mode = isa_mode.load();
  return mode == ISA_AVX512 || (mode == ISA_AUTO && B > AVX512_IN_PLACE_ABOVE);
}
static bool avx512_tiles() { return isa_mode.load() != ISA_AVX2; }

// Row offsets of a dense (B × B) or packed (B(B+1)/2) block: see BlockRows.
static std::vector<int64_t> row_offsets(int B, bool packed) {
  std::vector<int64_t> off((size_t)B);
  for (int64_t r = 0; r < B; ++r) off[(size_t)r] = packed ? r * B - r * (r - 1) / 2 - r : r * B;
  return off;
}

static void accumulate_range(float* fisher, const float* grads, int64_t block_stride, int64_t row_stride,
                             int64_t begin, int64_t end, int k, int B, float scale, bool upper_only, bool packed) {
  const int P = (B + 7) / 8 * 8;
  const int64_t fisher_floats = packed ? (int64_t)B * (B + 1) / 2 : (int64_t)B * B;
  // upper triangles (and packed blocks, which hold nothing else): added in place
  // (add_upper_avx512 / _avx2), no scratch; full blocks: padded tiles, mirrored
  const bool in_place = upper_only || packed;
  const auto add_upper = avx512_in_place(B) ? add_upper_avx512 : add_upper_avx2;
  const std::vector<int64_t> off = row_offsets(B, packed);
  std::vector<float> gpad(in_place ? 0 : (size_t)k * P, 0.0f), gram(in_place ? 0 : (size_t)P * P, 0.0f);
  const auto gram_upper = avx512_tiles() ? gram_upper_avx512 : gram_upper_avx2;
  Prefetcher ahead;
  for (int64_t b = begin; b < end; ++b) {
    const int64_t coming = b + PREFETCH_BLOCKS_AHEAD;
    if (PREFETCH_BLOCKS_AHEAD > 0 && coming < end)
      ahead.plan(fisher + coming * fisher_floats, fisher_floats, grads + coming * block_stride, row_stride, k, B);
    else ahead.clear();
    if (in_place) {
      add_upper(grads + b * block_stride, k, row_stride, scale, BlockRows{fisher + b * fisher_floats, off.data(), B}, ahead);
      continue;
    }
    pad_rows(grads + b * block_stride, row_stride, k, B, P, gpad.data());
    gram_upper(gpad.data(), k, P, gram.data(), ahead);
    add_gram(fisher + b * fisher_floats, B, P, scale, upper_only, gram.data());
  }
}

// fisher (num_blocks, B, B) += scale · Σ_i g_i g_iᵀ blockwise; block b's gradient i starts at
// grads + b·block_stride + i·row_stride (floats), its B values contiguous. upper_only: add the
// upper triangles (j ≥ i) only, leaving the strict lower ones as they were (the caller mirrors
// them once, after the last chunk): the mirror and half the row writes are then not done.
// packed: fisher is (num_blocks, B(B+1)/2), each block's upper triangle row by row (ops/packed.py),
// which is all it holds: upper_only changes nothing then. A k = 32 chunk, two threads, medians of
// 15 (5 at MiniLM's size), two rounds, dense | packed (Xeon, 2026-12-01): d = 10⁶, B = 50, AVX-512
// 21.1-21.5 | 17.1-17.2 ms, AVX2 23.3-24.2 | 21.3; MiniLM's 331,776 blocks of 32, AVX-512 167.3-167.6
// | 208.3-210.3 ms (a packed row's vectors straddle cache lines), AVX2 154.1-156.1 | 137.8-138.8.
void fisher_accumulate(uintptr_t fisher, uintptr_t grads, int64_t num_blocks, int k, int B, int64_t block_stride,
                       int64_t row_stride, double scale, bool upper_only, bool packed, int threads) {
  float* f = reinterpret_cast<float*>(fisher);
  const float* g = reinterpret_cast<const float*>(grads);
  parallel_ranges(num_blocks, threads, 1, [=](int64_t begin, int64_t end) {
    accumulate_range(f, g, block_stride, row_stride, begin, end, k, B, (float)scale, upper_only, packed);
  });
}

// Gradient tensors t = 0..T−1 into one row of the block buffer (SPEC §2a's chunk, block-major):
// tensor t's n_t floats at srcs[t] go to blocks starting at dsts[t] (its first block's row; blocks
// block_stride floats apart), zeroed where keeps[t] (n_t bytes, 0 = pruned; 0 = no mask) is 0.
// One pass over each gradient; threads split the blocks of all tensors. Returns the first t
// holding a NaN or ±inf (its rows are written all the same: the caller refuses the gradient and
// leaves the row as scratch), or −1. Measured against torch's per-tensor sum and strided copy in
// random order, medians of 80-150, 2 threads (bench/bench_copy_rows_cpu.py, 2026-12-01): MiniLM's
// 36 tensors, B = 32, 11.5 against 14.2-15.1 ms without keep-masks, 14.1-15.1 against 25.5-42.3
// with them; d = 10⁶, B = 50, 0.8-0.9 against 1.2-1.3 ms. On std::threads instead of torch's
// OpenMP threads: 17.2-19.0, 19.4-20.4 and 1.5-2.0 ms (parallel_ranges says why). stream: rows
// that are whole cache lines (B % 16 == 0, line-aligned) are written with streaming stores
// (movntps), which skip reading each destination line first; the caller asks for it for buffers
// far larger than the cache. MiniLM's copy then took 7.7-8.8 ms against 11.1-11.9 with cached
// stores (random order, medians of 120, 2026-12-01). On std::threads streaming stores had not
// helped (the spinning worker was the bottleneck then).
int64_t copy_rows(std::vector<uintptr_t> srcs, std::vector<uintptr_t> keeps, std::vector<int64_t> sizes,
                  std::vector<uintptr_t> dsts, int64_t block_stride, int B, bool stream, int threads) {
  const size_t T = srcs.size();
  std::vector<int64_t> first(T + 1, 0);  // tensor t's blocks are [first[t], first[t+1]) of all blocks
  for (size_t t = 0; t < T; ++t) first[t + 1] = first[t] + (sizes[t] + B - 1) / B;
  std::unique_ptr<std::atomic<bool>[]> bad(new std::atomic<bool>[T]);
  for (size_t t = 0; t < T; ++t) bad[t].store(false);
  parallel_ranges(first[T], threads, 1, [&](int64_t begin, int64_t end) {
    size_t t = std::upper_bound(first.begin(), first.end(), begin) - first.begin() - 1;
    for (; t < T && first[t] < end; ++t) {
      const int64_t lo = std::max(begin, first[t]) - first[t], hi = std::min(end, first[t + 1]) - first[t];
      const float* src = reinterpret_cast<const float*>(srcs[t]);
      const uint8_t* keep = reinterpret_cast<const uint8_t*>(keeps[t]);
      float* dst = reinterpret_cast<float*>(dsts[t]);
      // streaming stores only where every row starts a cache line (whole lines, no read for ownership)
      const bool lines = stream && B % 16 == 0 && dsts[t] % 64 == 0;  // then block_stride = k·B is too
      const bool ok = lines ? copy_tensor_rows<true>(src, keep, sizes[t], dst, block_stride, B, lo, hi)
                            : copy_tensor_rows<false>(src, keep, sizes[t], dst, block_stride, B, lo, hi);
      if (!ok) bad[t].store(true, std::memory_order_relaxed);
    }
  });
  for (size_t t = 0; t < T; ++t)
    if (bad[t].load()) return (int64_t)t;
  return -1;
}

// Each block's strict lower triangle ← its transposed upper one (fisher (num_blocks, B, B), in
// place): after flushes that added the upper triangles only. Plain copies, so the bits are torch's
// mirror (ops.blocks.mirror_upper_torch). Each block is in cache while it is read and written.
void mirror_upper(uintptr_t fisher, int64_t num_blocks, int B, int threads) {
  float* f = reinterpret_cast<float*>(fisher);
  parallel_ranges(num_blocks, threads, 1, [=](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      float* block = f + b * B * B;
      for (int r = 1; r < B; ++r)
        for (int c = 0; c < r; ++c) block[(int64_t)r * B + c] = block[(int64_t)c * B + r];
    }
  });
}

// Packed upper triangles (num_blocks, B(B+1)/2) ↔ dense symmetric blocks (num_blocks, B, B): plain
// copies (the bits of ops/packed.py's index_select), a block at a time, in cache while it is
// written. The torch backend's ops read a packed F⁻¹ through dense tiles made by unpack.
void unpack_upper(uintptr_t packed, uintptr_t dense, int64_t num_blocks, int B, int threads) {
  const float* p = reinterpret_cast<const float*>(packed);
  float* d = reinterpret_cast<float*>(dense);
  const std::vector<int64_t> off = row_offsets(B, true);
  const int64_t pf = (int64_t)B * (B + 1) / 2, df = (int64_t)B * B;
  parallel_ranges(num_blocks, threads, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b)
      for (int r = 0; r < B; ++r)
        for (int c = r; c < B; ++c) d[b * df + (int64_t)r * B + c] = d[b * df + (int64_t)c * B + r] = p[b * pf + off[r] + c];
  });
}

void pack_upper(uintptr_t dense, uintptr_t packed, int64_t num_blocks, int B, int threads) {
  const float* d = reinterpret_cast<const float*>(dense);
  float* p = reinterpret_cast<float*>(packed);
  const std::vector<int64_t> off = row_offsets(B, true);
  const int64_t pf = (int64_t)B * (B + 1) / 2, df = (int64_t)B * B;
  parallel_ranges(num_blocks, threads, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b)
      for (int r = 0; r < B; ++r)
        std::memcpy(p + b * pf + off[r] + r, d + b * df + (int64_t)r * B + r, sizeof(float) * (B - r));
  });
}

// Blocks [0, num_blocks) ← (F + λI)⁻¹; returns the indices of the blocks whose factorization
// failed (left unchanged), ascending.
std::vector<int64_t> fisher_invert(uintptr_t fisher, int64_t num_blocks, int B, double damp, bool packed, int threads) {
  float* f = reinterpret_cast<float*>(fisher);
  const std::vector<int64_t> off = packed ? row_offsets(B, true) : std::vector<int64_t>();
  const int64_t* upper = packed ? off.data() : nullptr;
  std::vector<int64_t> slots((size_t)num_blocks, -1);  // the range [begin, end) lists its failures from slots[begin]
  parallel_ranges(num_blocks, threads, 4, [&](int64_t begin, int64_t end) {
    std::vector<double> raw((size_t)4 * B * B + 4);  // 32-byte aligned by hand: AVX loads of d4 need it
    d4* a = reinterpret_cast<d4*>((reinterpret_cast<uintptr_t>(raw.data()) + 31) & ~uintptr_t{31});
    int64_t n = 0;
    for (int64_t b = begin; b < end; b += 4)
      invert_group(f, upper, b, (int)std::min<int64_t>(4, end - b), B, damp, a, slots.data() + begin, &n);
  });
  std::vector<int64_t> failed;
  for (int64_t s : slots)
    if (s >= 0) failed.push_back(s);
  return failed;
}

}  // namespace obk_cpu

PYBIND11_MODULE(_cpu, m) {
  m.doc() = "obert_kernels CPU kernels (raw-pointer binding; use obert_kernels.ops, not this module)";
  // Raised whenever a binding below changes: ops/backends/cpp refuses a module built from older
  // sources with that reason instead of meeting a TypeError at its first call. 2: copy_rows takes
  // `stream`, the OpenMP functions exist. 3: the ISA functions exist. 4: mirror_upper exists.
  // 5: fisher_accumulate takes `packed`. 6: set_isa takes "auto" (the default), isa() may say it.
  // 7: fisher_invert takes `packed`. 8: unpack_upper and pack_upper exist.
  m.attr("ABI") = 8;
  m.attr("AVX512_IN_PLACE_ABOVE") = obk_cpu::AVX512_IN_PLACE_ABOVE;  // isa "auto": see set_isa
  m.def("supported", &obk_cpu::supported, "whether this CPU runs the kernels (AVX2 and FMA)");
  m.def("avx512_supported", &obk_cpu::avx512_supported, "whether this CPU (and OS) runs the AVX-512 tiles");
  m.def("set_isa", &obk_cpu::set_isa, py::arg("name"),
        "the accumulation's instruction set: 'auto' (AVX-512 where it measured faster), 'avx512' (where "
        "supported) or 'avx2'; returns whether it was taken");
  m.def("isa", &obk_cpu::isa, "the accumulation's instruction set now: 'auto', 'avx512' or 'avx2'");
  m.def("openmp_built", &obk_cpu::openmp_built, "whether this module was compiled with OpenMP");
  m.def("openmp_symbol", &obk_cpu::openmp_symbol, "the address this module resolved omp_get_num_threads to (0: none)");
  m.def("set_openmp", &obk_cpu::set_openmp, py::arg("on"),
        "run the kernels' threads on the OpenMP runtime (only where it is torch's own; see ops/backends/cpp)");
  m.def("openmp_on", &obk_cpu::openmp_on, "whether the kernels' threads are the OpenMP runtime's");
  m.def("fisher_accumulate", &obk_cpu::fisher_accumulate, py::arg("fisher"), py::arg("grads"),
        py::arg("num_blocks"), py::arg("k"), py::arg("B"), py::arg("block_stride"), py::arg("row_stride"),
        py::arg("scale"), py::arg("upper_only"), py::arg("packed"), py::arg("threads"),
        py::call_guard<py::gil_scoped_release>());
  m.def("copy_rows", &obk_cpu::copy_rows, py::arg("srcs"), py::arg("keeps"), py::arg("sizes"), py::arg("dsts"),
        py::arg("block_stride"), py::arg("B"), py::arg("stream"), py::arg("threads"),
        py::call_guard<py::gil_scoped_release>());
  m.def("mirror_upper", &obk_cpu::mirror_upper, py::arg("fisher"), py::arg("num_blocks"), py::arg("B"),
        py::arg("threads"), py::call_guard<py::gil_scoped_release>());
  m.def("unpack_upper", &obk_cpu::unpack_upper, py::arg("packed"), py::arg("dense"), py::arg("num_blocks"),
        py::arg("B"), py::arg("threads"), py::call_guard<py::gil_scoped_release>());
  m.def("pack_upper", &obk_cpu::pack_upper, py::arg("dense"), py::arg("packed"), py::arg("num_blocks"),
        py::arg("B"), py::arg("threads"), py::call_guard<py::gil_scoped_release>());
  m.def("fisher_invert", &obk_cpu::fisher_invert, py::arg("fisher"), py::arg("num_blocks"), py::arg("B"),
        py::arg("damp"), py::arg("packed"), py::arg("threads"), py::call_guard<py::gil_scoped_release>());
}
