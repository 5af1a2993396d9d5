// Fused Woodbury accumulation of F⁻¹ (SPEC §2a): each Fisher block's rows stay in
// registers across the whole chunk of k gradients, so F⁻¹ crosses device memory once
// per chunk (read + write, half the bytes when packed) instead of once per gradient.
// The phases are woodbury_program in obk_math.cuh; this file supplies the GPU runner.
#include "cuda_check.cuh"
#include "launchers.h"
#include "obk_math.cuh"

namespace obk {
namespace {

template <class State>
struct DeviceCta {
  State st;
  template <class F>
  __device__ __forceinline__ void each(F&& f) { f(static_cast<int>(threadIdx.x), st); }
  __device__ __forceinline__ void barrier() { __syncthreads(); }

  // Segmented shuffle-down sum of st.part (seg_* in obk_math.cuh say who adds what).
  __device__ __forceinline__ void reduce_partials(int T, int P, int W, float* dst) {
    const int tid = threadIdx.x;
    float v = st.part;
#pragma unroll
    for (int off = 1; off < 32; off <<= 1) {
      const float other = __shfl_down_sync(0xffffffffu, v, off);
      if (seg_take(tid, off, T, P)) v += other;
    }
    if (seg_head(tid, T, P)) {
      const int slot = seg_slot(tid, T, P, W);
      if (slot >= 0) dst[slot] = v;
    }
  }
};

template <int BP, int R>
__global__ void __launch_bounds__(256) woodbury_kernel(WoodburyArgs a) {
  extern __shared__ __align__(16) float smem[];
  DeviceCta<WoodburyThread<BP, R>> cta;
  woodbury_program<BP, R>(cta, a, blockIdx.x, smem);
}

}  // namespace

void woodbury_update_launch(std::uintptr_t finv, long long num_blocks, int B, bool packed,
                            std::uintptr_t grads, long long stride_block, long long stride_grad,
                            long long d_valid, int k, double num_grads, int rows, std::uintptr_t stream) {
  require(B >= 1 && B <= MAX_WOODBURY_B,
          "woodbury_update keeps a block's rows in registers: B must be in 1.." + std::to_string(MAX_WOODBURY_B) +
              ", got " + std::to_string(B));
  require(num_blocks >= 1 && k >= 1, "num_blocks and k must be positive");
  require(num_grads > 0, "num_grads must be positive");
  require(d_valid > (num_blocks - 1) * B && d_valid <= num_blocks * B, "d_valid does not fit num_blocks blocks of B");
  require(rows == 0 || rows == 1 || (rows == 2 && B > 32 && B <= 64),
          "rows per thread must be 0 (default), 1, or 2 when 32 < B <= 64");
  require_device_pointer(finv, "finv");
  require_device_pointer(grads, "grads");
  WoodburyArgs a{reinterpret_cast<float*>(finv), num_blocks, B, packed, reinterpret_cast<const float*>(grads),
                 stride_block, stride_grad, d_valid, k, static_cast<float>(num_grads)};
  const WoodburyConfig c = woodbury_config(B, rows == 0 ? woodbury_default_rows(B) : rows);
  const long long ctas = (num_blocks + c.blocks_per_cta - 1) / c.blocks_per_cta;
  require(ctas <= 0x7fffffffLL, "too many Fisher blocks for one launch");
  const size_t smem = static_cast<size_t>(woodbury_smem_floats(c)) * sizeof(float);
  require(smem <= 48 * 1024, "internal: woodbury_config asks for more than 48 KiB of shared memory");
  woodbury_dispatch(B, rows, [&](auto bp, auto r) {
    constexpr int BPv = decltype(bp)::value, Rv = decltype(r)::value;
    woodbury_kernel<BPv, Rv><<<static_cast<unsigned>(ctas), c.threads, smem, as_stream(stream)>>>(a);
  });
  check_launch("woodbury_kernel");
}

int woodbury_max_block_size() { return MAX_WOODBURY_B; }

}  // namespace obk
