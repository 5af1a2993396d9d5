// CPU harness for the CUDA kernels' programs (built by python_tests/test_cuda_harness.py
// with the host C++ compiler, loaded through ctypes). It runs woodbury_program,
// score_group and update_program from obk_math.cuh — the code the kernels run — with
// CPU runners in place of the GPU's threads, barriers and warp shuffles:
//   HostCta::each   runs a phase for every thread in turn, each with its own registers
//   HostCta::reduce_partials  the segmented shuffle-down tree with arrays for lanes, using
//                   the same seg_take/seg_head/seg_slot predicates as the GPU's __shfl_down_sync
// Not exercised here: the kernels' launch glue, __syncthreads/__syncwarp placement (the
// CPU runner finishes each phase on every thread before the next, so a missing barrier
// would not show), and the device's float rounding/FMA contraction choices.
#include <cstdint>
#include <vector>

#include "obk_math.cuh"
#include "sequential_math.cuh"

namespace {

template <class State>
struct HostCta {
  int threads;
  std::vector<State> st;
  explicit HostCta(int n) : threads(n), st(n) {}
  template <class F>
  void each(F&& f) {
    for (int t = 0; t < threads; ++t) f(t, st[t]);
  }
  void barrier() {}
  // The GPU's shuffle-down tree, lane by lane: __shfl_down_sync(v, off) reads lane l+off's
  // value from before this step (a lane past the warp end returns its own; seg_take is false there).
  void reduce_partials(int T, int P, int W, float* dst) {
    for (int w0 = 0; w0 < threads; w0 += 32) {
      float v[32], before[32];
      for (int l = 0; l < 32; ++l) v[l] = st[w0 + l].part;
      for (int off = 1; off < 32; off <<= 1) {
        for (int l = 0; l < 32; ++l) before[l] = v[l];
        for (int l = 0; l < 32; ++l) {
          const float other = l + off < 32 ? before[l + off] : before[l];
          if (obk::seg_take(w0 + l, off, T, P)) v[l] += other;
        }
      }
      for (int l = 0; l < 32; ++l) {
        if (!obk::seg_head(w0 + l, T, P)) continue;
        const int slot = obk::seg_slot(w0 + l, T, P, W);
        if (slot >= 0) dst[slot] = v[l];
      }
    }
  }
};

struct HostWarp {
  template <class F>
  void each(F&& f) {
    for (int lane = 0; lane < 32; ++lane) f(lane, 32);
  }
  void barrier() {}
};

}  // namespace

extern "C" {

// Same arguments as obk::woodbury_update_launch, host pointers. Returns 0, −1 when
// (B, rows) has no instantiation, −2 when the program wrote past its shared memory.
int obk_host_woodbury(float* finv, long long num_blocks, int B, int packed, const float* grads, long long stride_block,
                      long long stride_grad, long long d_valid, int k, double num_grads, int rows) {
  obk::WoodburyArgs a{finv, num_blocks, B, packed != 0, grads, stride_block, stride_grad, d_valid, k,
                      static_cast<float>(num_grads)};
  const obk::WoodburyConfig c = obk::woodbury_config(B, rows == 0 ? obk::woodbury_default_rows(B) : rows);
  // the launch's dynamic shared memory, then a guard band the program must never touch
  const long long region = obk::woodbury_smem_floats(c);
  const int guard = 256;
  std::vector<float> smem(static_cast<size_t>(region + guard) + 4);
  float* aligned = reinterpret_cast<float*>((reinterpret_cast<std::uintptr_t>(smem.data()) + 15) & ~std::uintptr_t(15));
  for (int e = 0; e < guard; ++e) aligned[region + e] = 12345.0f;
  const long long ctas = (num_blocks + c.blocks_per_cta - 1) / c.blocks_per_cta;
  const bool ok = obk::woodbury_dispatch(B, rows, [&](auto bp, auto r) {
    constexpr int BPv = decltype(bp)::value, Rv = decltype(r)::value;
    for (long long cta = 0; cta < ctas; ++cta) {
      HostCta<obk::WoodburyThread<BPv, Rv>> runner(c.threads);
      obk::woodbury_program<BPv, Rv>(runner, a, cta, aligned);
    }
  });
  for (int e = 0; e < guard; ++e)
    if (aligned[region + e] != 12345.0f) return -2;  // wrote past its shared memory
  return ok ? 0 : -1;
}

// The kernel's configuration for (B, rows): {BP, R, T, blocks_per_cta, threads, max_warps, smem floats}.
void obk_host_woodbury_config(int B, int rows, long long* out) {
  const obk::WoodburyConfig c = obk::woodbury_config(B, rows == 0 ? obk::woodbury_default_rows(B) : rows);
  out[0] = c.BP;
  out[1] = c.R;
  out[2] = c.T;
  out[3] = c.blocks_per_cta;
  out[4] = c.threads;
  out[5] = c.max_warps;
  out[6] = obk::woodbury_smem_floats(c);
}

// The segmented shuffle-down sum alone: values (threads,) in, dst (P·W) out.
struct PartOnly {
  float part;
};
void obk_host_segment_sum(int T, int P, int W, int threads, const float* values, float* dst) {
  HostCta<PartOnly> cta(threads);
  for (int t = 0; t < threads; ++t) cta.st[t].part = values[t];
  cta.reduce_partials(T, P, W, dst);
}

void obk_host_scores(const float* weight, const unsigned char* pruned, const float* finv, int B, int packed,
                     long long d, int group, int n_prune, const int* subset_bits, int num_subsets, float* out) {
  obk::ScoreArgs a{weight, pruned, finv, packed != 0, B, d, group, n_prune, subset_bits,
                   n_prune > 0 ? num_subsets : 0, out};
  for (long long q = 0; q < d / group; ++q) obk::score_group(a, q);
}

// Returns the number of blocks whose joint system failed (their weights untouched), or −2
// when the program wrote past its shared memory.
int obk_host_update(float* weight, const unsigned char* prune, const float* finv, long long num_blocks, int B,
                    int packed, long long d, int group, int mode) {
  const long long region = (obk::update_smem_bytes(B, mode) + 3) / 4;
  std::vector<float> smem(static_cast<size_t>(region) + 64);
  for (int e = 0; e < 64; ++e) smem[region + e] = 12345.0f;  // guard band
  int failed = 0;
  for (long long b = 0; b < num_blocks; ++b) {
    const int nv = static_cast<int>(d - b * B < B ? d - b * B : B);
    obk::UpdateBlock u = obk::update_block_layout(reinterpret_cast<unsigned char*>(smem.data()),
                                                  finv + b * obk::block_stride(B, packed != 0), packed != 0, B, nv,
                                                  group, mode);
    HostWarp warp;
    if (!obk::update_program(warp, u, weight + b * B, prune + b * B, mode)) ++failed;
  }
  for (int e = 0; e < 64; ++e)
    if (smem[region + e] != 12345.0f) return -2;  // wrote past its shared memory
  return failed;
}

// sequential_program on every block (order/cumloss prefilled by the caller). Returns 0, or −2
// when the program wrote past its shared memory.
int obk_host_sequential(const float* weight, const unsigned char* pruned, const float* finv, long long num_blocks,
                        int B, int packed, long long d, int unit, int nm_m, int nm_n, long long* order, float* cumloss) {
  const long long region = (obk::sequential_smem_bytes(B, B / unit) + 3) / 4;
  std::vector<float> smem(static_cast<size_t>(region) + 64);
  for (int e = 0; e < 64; ++e) smem[region + e] = 12345.0f;  // guard band
  const int U = B / unit;
  for (long long b = 0; b < num_blocks; ++b) {
    const int nv = static_cast<int>(d - b * B < B ? d - b * B : B);
    obk::SequentialBlock s = obk::sequential_block_layout(reinterpret_cast<unsigned char*>(smem.data()),
                                                          finv + b * obk::block_stride(B, packed != 0), packed != 0, B,
                                                          nv, unit, nm_m, nm_n);
    HostWarp warp;
    obk::sequential_program(warp, s, weight + b * B, pruned ? pruned + b * B : nullptr, order + b * U, cumloss + b * U);
  }
  for (int e = 0; e < 64; ++e)
    if (smem[region + e] != 12345.0f) return -2;
  return 0;
}

}  // extern "C"
