// OBS weight update and scatter (SPEC §2c): one warp per Fisher block, its vectors (and
// for "joint" the |P|×|P| system) in shared memory; update_program in obk_math.cuh.
#include "cuda_check.cuh"
#include "launchers.h"
#include "obk_math.cuh"

namespace obk {
namespace {

struct DeviceWarp {
  template <class F>
  __device__ __forceinline__ void each(F&& f) { f(static_cast<int>(threadIdx.x), 32); }
  __device__ __forceinline__ void barrier() { __syncwarp(); }
};

__global__ void __launch_bounds__(32) update_kernel(float* weight, const unsigned char* prune, const float* finv,
                                                    bool packed, int B, long long d, int group, int mode,
                                                    int* failed) {
  extern __shared__ __align__(16) unsigned char smem[];
  const long long b = blockIdx.x;
  const int nv = static_cast<int>(d - b * B < B ? d - b * B : B);
  UpdateBlock u = update_block_layout(smem, finv + b * block_stride(B, packed), packed, B, nv, group, mode);
  DeviceWarp warp;
  if (!update_program(warp, u, weight + b * B, prune + b * B, mode) && threadIdx.x == 0) failed[b] = 1;
}

int max_dynamic_smem() {
  int device = 0, bytes = 0;
  check_cuda(cudaGetDevice(&device), "cudaGetDevice");
  check_cuda(cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, device), "cudaDeviceGetAttribute");
  return bytes;
}

}  // namespace

void obs_update_launch(std::uintptr_t weight, std::uintptr_t prune_mask, std::uintptr_t finv,
                       long long num_blocks, int B, bool packed, long long d, int group, int mode,
                       std::uintptr_t failed, std::uintptr_t stream) {
  require(B >= 1 && num_blocks >= 1, "B and num_blocks must be positive");
  require(num_blocks <= 0x7fffffffLL, "too many Fisher blocks for one launch");
  require(d > (num_blocks - 1) * B && d <= num_blocks * B, "d does not fit num_blocks blocks of B");
  require(group >= 1 && group <= MAX_GROUP && B % group == 0, "group size must divide B and be ≤ 8");
  require(mode == UPDATE_OBS || mode == UPDATE_JOINT || mode == UPDATE_NONE, "mode must be 0 (obs), 1 (joint) or 2 (none)");
  require_device_pointer(weight, "weight");
  require_device_pointer(prune_mask, "prune_mask");
  require_device_pointer(finv, "finv");
  require_device_pointer(failed, "failed");
  const long long smem = update_smem_bytes(B, mode);
  if (smem > 48 * 1024) {
    require(smem <= max_dynamic_smem(), "obs_update(joint) with B=" + std::to_string(B) + " needs " +
                                            std::to_string(smem) + " bytes of shared memory, more than this device has");
    check_cuda(cudaFuncSetAttribute(update_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)),
               "cudaFuncSetAttribute");
  }
  update_kernel<<<static_cast<unsigned>(num_blocks), 32, static_cast<size_t>(smem), as_stream(stream)>>>(
      reinterpret_cast<float*>(weight), reinterpret_cast<const unsigned char*>(prune_mask),
      reinterpret_cast<const float*>(finv), packed, B, d, group, mode, reinterpret_cast<int*>(failed));
  check_launch("update_kernel");
}

int joint_max_block_size() {
  const long long bytes = max_dynamic_smem();
  int B = 1;
  while (update_smem_bytes(B + 1, UPDATE_JOINT) <= bytes) ++B;
  return B;
}

int device_count(std::string* error) {
  int n = 0;
  cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) {
    if (error) *error = cudaGetErrorString(err);
    cudaGetLastError();
    return 0;
  }
  return n;
}

int runtime_version() {
  int v = 0;
  cudaRuntimeGetVersion(&v);
  return v;
}

int driver_version() {
  int v = 0;
  cudaDriverGetVersion(&v);
  return v;
}

}  // namespace obk
