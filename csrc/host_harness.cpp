// CPU harness for the CUDA kernels' programs (built by python_tests/test_cuda_harness.py
// with the host C++ compiler, loaded through ctypes). It runs woodbury_program,
// score_group and update_program from obk_math.cuh — the code the kernels run — with
// CPU runners in place of the GPU's threads, barriers and warp shuffles:
//   HostCta::each   runs a phase for every thread in turn, each with its own registers
//   HostCta::reduce_partials  sums each block's per-warp partials with a loop (the GPU
//                   uses a segmented __shfl_down_sync tree: that code is compiled only)
// Not exercised here: the kernels' launch glue, __syncthreads/__syncwarp placement (the
// CPU runner finishes each phase on every thread before the next, so a missing barrier
// would not show), and the device's float rounding/FMA contraction choices.
#include <cstdint>
#include <vector>

#include "obk_math.cuh"

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
  void reduce_partials(int T, int P, int W, float* dst) {
    for (int e = 0; e < P * W; ++e) dst[e] = 0.0f;
    for (int t = 0; t < P * T && t < threads; ++t) {
      const int key = t / T;
      dst[key * W + ((t >> 5) - ((key * T) >> 5))] += st[t].part;
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

// Same arguments as obk::woodbury_update_launch, host pointers. Returns 0, or −1 when B
// is outside the kernel's range.
int obk_host_woodbury(float* finv, long long num_blocks, int B, int packed, const float* grads, long long stride_block,
                      long long stride_grad, long long d_valid, int k, double num_grads) {
  obk::WoodburyArgs a{finv, num_blocks, B, packed != 0, grads, stride_block, stride_grad, d_valid, k,
                      static_cast<float>(num_grads)};
  const obk::WoodburyConfig c = obk::woodbury_config(B);
  std::vector<float> smem(static_cast<size_t>(obk::woodbury_smem_floats(c)) + 4);
  float* aligned = reinterpret_cast<float*>((reinterpret_cast<std::uintptr_t>(smem.data()) + 15) & ~std::uintptr_t(15));
  const long long ctas = (num_blocks + c.blocks_per_cta - 1) / c.blocks_per_cta;
  const bool ok = obk::woodbury_dispatch(B, [&](auto bp, auto r) {
    constexpr int BPv = decltype(bp)::value, Rv = decltype(r)::value;
    for (long long cta = 0; cta < ctas; ++cta) {
      HostCta<obk::WoodburyThread<BPv, Rv>> runner(c.threads);
      obk::woodbury_program<BPv, Rv>(runner, a, cta, aligned);
    }
  });
  return ok ? 0 : -1;
}

// The kernel's configuration for B: {BP, R, T, blocks_per_cta, threads, max_warps, smem floats}.
void obk_host_woodbury_config(int B, long long* out) {
  const obk::WoodburyConfig c = obk::woodbury_config(B);
  out[0] = c.BP;
  out[1] = c.R;
  out[2] = c.T;
  out[3] = c.blocks_per_cta;
  out[4] = c.threads;
  out[5] = c.max_warps;
  out[6] = obk::woodbury_smem_floats(c);
}

void obk_host_scores(const float* weight, const unsigned char* pruned, const float* finv, int B, int packed,
                     long long d, int group, int n_prune, const int* subset_bits, int num_subsets, float* out) {
  obk::ScoreArgs a{weight, pruned, finv, packed != 0, B, d, group, n_prune, subset_bits,
                   n_prune > 0 ? num_subsets : 0, out};
  for (long long q = 0; q < d / group; ++q) obk::score_group(a, q);
}

// Returns the number of blocks whose joint system failed (their weights untouched).
int obk_host_update(float* weight, const unsigned char* prune, const float* finv, long long num_blocks, int B,
                    int packed, long long d, int group, int mode) {
  std::vector<float> smem(static_cast<size_t>(obk::update_smem_bytes(B, mode)) / 4 + 4);
  int failed = 0;
  for (long long b = 0; b < num_blocks; ++b) {
    const int nv = static_cast<int>(d - b * B < B ? d - b * B : B);
    obk::UpdateBlock u = obk::update_block_layout(reinterpret_cast<unsigned char*>(smem.data()),
                                                  finv + b * obk::block_stride(B, packed != 0), packed != 0, B, nv,
                                                  group, mode);
    HostWarp warp;
    if (!obk::update_program(warp, u, weight + b * B, prune + b * B, mode)) ++failed;
  }
  return failed;
}

}  // extern "C"
