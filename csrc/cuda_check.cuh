// Host-side checks shared by the .cu launchers: arguments, pointers, launch errors.
#pragma once

#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

namespace obk {

inline void require(bool ok, const std::string& what) {
  if (!ok) throw std::invalid_argument("obert_kernels CUDA: " + what);
}

inline void check_cuda(cudaError_t err, const char* what) {
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("obert_kernels CUDA: ") + what + ": " + cudaGetErrorString(err));
}

// The pointer must be device (or managed) memory of the current device.
inline void require_device_pointer(std::uintptr_t ptr, const char* name) {
  require(ptr != 0, std::string(name) + " is a null pointer");
  cudaPointerAttributes attr;
  cudaError_t err = cudaPointerGetAttributes(&attr, reinterpret_cast<const void*>(ptr));
  if (err != cudaSuccess) {
    cudaGetLastError();  // clear the sticky-free error state of this query
    throw std::invalid_argument(std::string("obert_kernels CUDA: ") + name + " is not CUDA memory (" +
                                cudaGetErrorString(err) + ")");
  }
  require(attr.type == cudaMemoryTypeDevice || attr.type == cudaMemoryTypeManaged,
          std::string(name) + " is not device memory (host pointer?)");
  int current = -1;
  check_cuda(cudaGetDevice(&current), "cudaGetDevice");
  require(attr.device == current, std::string(name) + " is on cuda:" + std::to_string(attr.device) +
                                      " but the current device is cuda:" + std::to_string(current));
}

// After every launch: a bad configuration or an earlier asynchronous fault surfaces here.
inline void check_launch(const char* kernel) {
  check_cuda(cudaGetLastError(), (std::string(kernel) + " launch failed").c_str());
}

inline cudaStream_t as_stream(std::uintptr_t s) { return reinterpret_cast<cudaStream_t>(s); }

}  // namespace obk
