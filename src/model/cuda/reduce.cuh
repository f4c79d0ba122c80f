// The model kernels' reductions: the shared fixed-order warp/block sum and max of
// core/block_reduce.cuh, visible in og::gpu.
#pragma once
#include "core/block_reduce.cuh"

namespace og::gpu {
using og::block_max;
using og::block_sum;
using og::warp_max;
using og::warp_sum;
}  // namespace og::gpu
