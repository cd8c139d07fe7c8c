// CPU build of kernel.cu: the shim, the kernel text itself, and C entry points for ctypes.
//
// lut_cpu_<type>(...) takes the kernel's arguments plus the block shape and the OpenMP thread
// count, and launches the kernel on the emulated grid (ceil(W / block_x), ceil(band / block_y)).
// Built on first use by backend/layer_harmonizer/lut/cpu_kernel.py into the user cache directory.
#include "cpu_shim.h"
#include "kernel.cu"

#define LUT_CPU_ENTRY(name, kernel, T)                                                        \
  extern "C" int name(LUT_ENTRY_ARGS(T), int block_x, int block_y, int threads) {             \
    if (block_x < 1 || block_y < 1 || threads < 1) return 1;                                  \
    const unsigned gx = ((unsigned)width + block_x - 1) / block_x;                            \
    const unsigned gy = ((unsigned)band_height + block_y - 1) / block_y;                      \
    LUT_CPU_LAUNCH(kernel, gx, gy, block_x, block_y, threads, image, mask, has_mask,          \
                   intervals, colors, out, band_height, width, first_row, height, rows, cols, \
                   knots, strength);                                                          \
    return 0;                                                                                 \
  }

LUT_CPU_ENTRY(lut_cpu_f32, lut_apply_f32, float)
LUT_CPU_ENTRY(lut_cpu_u8, lut_apply_u8, unsigned char)
LUT_CPU_ENTRY(lut_cpu_u16, lut_apply_u16, unsigned short)

// Version of the C interface above; cpu_kernel.py refuses a library reporting another.
extern "C" int lut_cpu_abi_version(void) { return 1; }
