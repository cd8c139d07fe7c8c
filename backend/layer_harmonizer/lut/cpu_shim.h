// Makes the CUDA subset used by kernel.cu compile as C++ (g++ / clang++ with OpenMP).
//
// The qualifiers become inline functions, and a launch is emulated: LUT_CPU_LAUNCH runs every
// block of the grid on an OpenMP thread and every thread of the block in order, setting the
// per-OpenMP-thread blockIdx / threadIdx / blockDim / gridDim the kernel reads. The kernel's
// index and bounds code therefore runs exactly as it would on a GPU, for any block shape.
// Blocks are handed out dynamically (8 at a time) so a thread slowed down by other processes on
// a shared machine does not hold up the whole launch; every pixel is independent, so the result
// does not depend on the order.
#ifndef LUT_CPU_SHIM_H
#define LUT_CPU_SHIM_H

#define __global__ inline __attribute__((always_inline))
#define __device__
#define __forceinline__ inline __attribute__((always_inline))
#define __restrict__ __restrict
#define __launch_bounds__(...)

struct lut_dim3 {
  unsigned x, y, z;
};

static thread_local lut_dim3 blockIdx, threadIdx, blockDim, gridDim;

// Launch `kernel(args...)` on grid (gx, gy) of blocks (bx, by) with `threads` OpenMP threads.
#define LUT_CPU_LAUNCH(kernel, gx, gy, bx, by, threads, ...)                          \
  do {                                                                                 \
    const unsigned lut_gx_ = (gx), lut_gy_ = (gy), lut_bx_ = (bx), lut_by_ = (by);     \
    _Pragma("omp parallel for collapse(2) schedule(dynamic, 8) num_threads(threads)")      \
    for (unsigned lut_y_ = 0; lut_y_ < lut_gy_; ++lut_y_) {                            \
      for (unsigned lut_x_ = 0; lut_x_ < lut_gx_; ++lut_x_) {                          \
        gridDim = lut_dim3{lut_gx_, lut_gy_, 1};                                       \
        blockDim = lut_dim3{lut_bx_, lut_by_, 1};                                      \
        blockIdx = lut_dim3{lut_x_, lut_y_, 0};                                        \
        for (unsigned lut_ty_ = 0; lut_ty_ < lut_by_; ++lut_ty_) {                     \
          for (unsigned lut_tx_ = 0; lut_tx_ < lut_bx_; ++lut_tx_) {                   \
            threadIdx = lut_dim3{lut_tx_, lut_ty_, 0};                                 \
            kernel(__VA_ARGS__);                                                       \
          }                                                                            \
        }                                                                              \
      }                                                                                \
    }                                                                                  \
  } while (0)

#endif  // LUT_CPU_SHIM_H
