// Host-side entry points of the CUDA kernels, as the pybind11 binding sees them.
// Plain C++ types only (no CUDA or torch headers): device pointers and the stream are
// integers handed over from Python (tensor.data_ptr(), torch.cuda.current_stream().cuda_stream).
// Each function re-checks what it must (pointers are device memory on the current
// device, sizes in range) and throws std::invalid_argument (Python ValueError) or
// std::runtime_error (Python RuntimeError, e.g. a failed launch).
#pragma once

#include <cstdint>
#include <string>

namespace obk {

// F⁻¹ ← Woodbury update of every block with a chunk of k gradients (SPEC §2a), in place.
// grads element (block b, gradient t, coordinate j) at b·stride_block + t·stride_grad + j,
// coordinates b·B + j ≥ d_valid read as zero. rows: F⁻¹ rows per thread, 0 = default
// (woodbury_default_rows), 1, or 2 when 32 < B ≤ 64 (a tuning knob for the benchmark).
void woodbury_update_launch(std::uintptr_t finv, long long num_blocks, int B, bool packed,
                            std::uintptr_t grads, long long stride_block, long long stride_grad,
                            long long d_valid, int k, double num_grads, int rows, std::uintptr_t stream);

// Scores of d weights (SPEC §2b) into out: (d,), (d/g,) or (d/M, num_subsets) float32.
void obs_scores_launch(std::uintptr_t weight, std::uintptr_t pruned, std::uintptr_t finv,
                       long long num_blocks, int B, bool packed, long long d, int group, int n_prune,
                       std::uintptr_t subset_bits, int num_subsets, std::uintptr_t out,
                       std::uintptr_t stream);

// Weight update and scatter (SPEC §2c), in place on weight (d,) float32; mode 0 "obs",
// 1 "joint", 2 "none". failed (num_blocks,) int32, zero on entry: set to 1 for blocks
// whose joint system was not positive definite in float32 (their weights are untouched).
void obs_update_launch(std::uintptr_t weight, std::uintptr_t prune_mask, std::uintptr_t finv,
                       long long num_blocks, int B, bool packed, long long d, int group, int mode,
                       std::uintptr_t failed, std::uintptr_t stream);

// Sequential OBS (SPEC §2d): each block's greedy order and cumulative losses. unit: weights per
// step (1, or 4 for block4); nm_m, nm_n: N:M's M and N (0, 0 otherwise). order (num_blocks, B/unit)
// int64 and cumloss (num_blocks, B/unit) float32 must be prefilled with −1 and +inf.
void sequential_order_launch(std::uintptr_t weight, std::uintptr_t pruned, std::uintptr_t finv, long long num_blocks,
                             int B, bool packed, long long d, int unit, int nm_m, int nm_n, std::uintptr_t order,
                             std::uintptr_t cumloss, std::uintptr_t stream);
// Bytes of shared memory sequential_order needs for (B, unit).
long long sequential_smem(int B, int unit);

// Devices the CUDA runtime sees, and the runtime's message when it sees none.
int device_count(std::string* error);
int runtime_version();
int driver_version();

// Largest B the Woodbury kernel serves; largest group for scores/updates.
int woodbury_max_block_size();
int max_group_size();
// Largest B obs_update(mode="joint") serves on the current device (shared-memory bound).
int joint_max_block_size();

}  // namespace obk
