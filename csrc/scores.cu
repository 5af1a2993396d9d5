// Saliency scores (SPEC §2b), one group per thread: score_group in obk_math.cuh.
#include "cuda_check.cuh"
#include "launchers.h"
#include "obk_math.cuh"

namespace obk {
namespace {

__global__ void __launch_bounds__(128) scores_kernel(ScoreArgs a, long long num_groups) {
  const long long q = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (q < num_groups) score_group(a, q);
}

}  // namespace

void obs_scores_launch(std::uintptr_t weight, std::uintptr_t pruned, std::uintptr_t finv,
                       long long num_blocks, int B, bool packed, long long d, int group, int n_prune,
                       std::uintptr_t subset_bits, int num_subsets, std::uintptr_t out,
                       std::uintptr_t stream) {
  require(B >= 1 && num_blocks >= 1, "B and num_blocks must be positive");
  require(d > (num_blocks - 1) * B && d <= num_blocks * B, "d does not fit num_blocks blocks of B");
  require(group >= 1 && group <= MAX_GROUP, "group size must be in 1.." + std::to_string(MAX_GROUP));
  require(B % group == 0 && d % group == 0, "B and d must be multiples of the group size");
  const bool nm = n_prune > 0;
  require(!nm || (n_prune < group && num_subsets >= 1 && subset_bits != 0), "bad N:M subset table");
  require_device_pointer(weight, "weight");
  require_device_pointer(finv, "finv");
  require_device_pointer(out, "out");
  if (pruned) require_device_pointer(pruned, "pruned");
  if (nm) require_device_pointer(subset_bits, "subset_bits");
  ScoreArgs a{reinterpret_cast<const float*>(weight), reinterpret_cast<const unsigned char*>(pruned),
              reinterpret_cast<const float*>(finv), packed, B, d, group, n_prune,
              reinterpret_cast<const int*>(subset_bits), nm ? num_subsets : 0, reinterpret_cast<float*>(out)};
  const long long groups = d / group;
  const int threads = 128;
  const long long ctas = (groups + threads - 1) / threads;
  require(ctas <= 0x7fffffffLL, "too many groups for one launch");
  scores_kernel<<<static_cast<unsigned>(ctas), threads, 0, as_stream(stream)>>>(a, groups);
  check_launch("scores_kernel");
}

int max_group_size() { return MAX_GROUP; }

}  // namespace obk
