// Sequential OBS (SPEC §2d): one warp per Fisher block, its copy of F⁻¹ in shared memory for
// all its greedy steps; sequential_program in sequential_math.cuh (run on the CPU by the harness).
#include "cuda_check.cuh"
#include "launchers.h"
#include "sequential_math.cuh"

namespace obk {
namespace {

struct SeqWarp {
  template <class F>
  __device__ __forceinline__ void each(F&& f) { f(static_cast<int>(threadIdx.x), 32); }
  __device__ __forceinline__ void barrier() { __syncwarp(); }
};

__global__ void __launch_bounds__(32) sequential_kernel(const float* weight, const unsigned char* pruned,
                                                        const float* finv, bool packed, int B, long long d, int unit,
                                                        int nm_m, int nm_n, long long* order, float* cumloss) {
  extern __shared__ __align__(16) unsigned char smem[];
  const long long b = blockIdx.x;
  const int nv = static_cast<int>(d - b * B < B ? d - b * B : B);
  SequentialBlock s = sequential_block_layout(smem, finv + b * block_stride(B, packed), packed, B, nv, unit, nm_m, nm_n);
  SeqWarp warp;
  sequential_program(warp, s, weight + b * B, pruned ? pruned + b * B : nullptr, order + b * s.U, cumloss + b * s.U);
}

}  // namespace

void sequential_order_launch(std::uintptr_t weight, std::uintptr_t pruned, std::uintptr_t finv, long long num_blocks,
                             int B, bool packed, long long d, int unit, int nm_m, int nm_n, std::uintptr_t order,
                             std::uintptr_t cumloss, std::uintptr_t stream) {
  require(B >= 1 && num_blocks >= 1 && num_blocks <= 0x7fffffffLL, "B and num_blocks must be positive (and fit a launch)");
  require(d > (num_blocks - 1) * B && d <= num_blocks * B, "d does not fit num_blocks blocks of B");
  require(unit >= 1 && unit <= MAX_GROUP && B % unit == 0, "unit must divide B and be ≤ 8");
  require(nm_n == 0 || (unit == 1 && nm_m >= 1 && nm_n < nm_m && B % nm_m == 0), "bad N:M group");
  require_device_pointer(weight, "weight");
  require_device_pointer(finv, "finv");
  require_device_pointer(order, "order");
  require_device_pointer(cumloss, "cumloss");
  if (pruned) require_device_pointer(pruned, "pruned");
  const long long smem = sequential_smem_bytes(B, B / unit);
  if (smem > 48 * 1024) {
    int device = 0, optin = 0;
    check_cuda(cudaGetDevice(&device), "cudaGetDevice");
    check_cuda(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device), "cudaDeviceGetAttribute");
    require(smem <= optin, "sequential_order with B=" + std::to_string(B) + " needs " + std::to_string(smem) +
                               " bytes of shared memory, more than this device has");
    check_cuda(cudaFuncSetAttribute(sequential_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)),
               "cudaFuncSetAttribute");
  }
  sequential_kernel<<<static_cast<unsigned>(num_blocks), 32, static_cast<size_t>(smem), as_stream(stream)>>>(
      reinterpret_cast<const float*>(weight), reinterpret_cast<const unsigned char*>(pruned),
      reinterpret_cast<const float*>(finv), packed, B, d, unit, nm_m, nm_n, reinterpret_cast<long long*>(order),
      reinterpret_cast<float*>(cumloss));
  check_launch("sequential_kernel");
}

long long sequential_smem(int B, int unit) { return sequential_smem_bytes(B, B / unit); }

}  // namespace obk
