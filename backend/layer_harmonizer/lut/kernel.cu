// Fused AICT LUT apply: the only kernel text of the project.
//
// Compiled three ways from this one file: by NVRTC at run time (CuPy RawModule), by nvcc in the
// CI compile check, and by the system C++ compiler through cpu_shim.h (cpu_entry.cpp). It must
// therefore stay in the subset all three accept: no #include, no #if (plain #define only), no
// CUDA intrinsics, no libm calls (ternary clamps instead of fminf/fmaxf), `long long` for pixel
// offsets.
//
// Per pixel (i, j) of an H x W image and colour channel c with value x in [0, 1]:
//   (u, v) = (i (M-1)/(H-1), j (N-1)/(W-1))                     grid position, align corners
//   x_hat  = trilinear(intervals[c], u, v, x * knots)            knots + 1 knots
//   y      = clamp(trilinear(colors[c], u, v, x_hat * (knots - 1)), 0, 1)   knots knots
//   out    = a >= 1 ? y : x + a (y - x),  a = strength * mask[i, j]
// Every coordinate is clamped to its axis (border padding). Pixels with a <= 0 are copied from
// the input unchanged. Images are HWC (3 interleaved channels); the LUT maps are contiguous
// float32 (3, M, N, knots + 1) and (3, M, N, knots), knot axis last.

// ---- math helpers -------------------------------------------------------------------------

__device__ __forceinline__ float lut_clampf(float v, float lo, float hi) {
  v = v > lo ? v : lo;  // maps NaN to lo
  return v < hi ? v : hi;
}

__device__ __forceinline__ float lut_lerp(float a, float b, float t) { return a + t * (b - a); }

// One interpolation axis: index of the lower knot, whether an upper knot exists, the fraction.
struct lut_axis_t {
  int index;
  int next;  // 1 when index + 1 is inside the axis, else 0 (border clamp)
  float frac;
};

// `coord` in knot units, clamped to [0, size - 1].
__device__ __forceinline__ lut_axis_t lut_axis(float coord, int size) {
  lut_axis_t a;
  const float c = lut_clampf(coord, 0.0f, (float)(size - 1));
  a.index = (int)c;  // c >= 0: truncation is floor
  a.next = a.index < size - 1 ? 1 : 0;
  a.frac = c - (float)a.index;
  return a;
}

// Grid position of pixel `i` of an axis of `pixels` onto a LUT axis of `cells` (align corners):
// i (cells - 1) / (pixels - 1), split exactly in integers so only the fraction is rounded.
// The caller guarantees (pixels - 1) (cells - 1) < 2^31.
__device__ __forceinline__ lut_axis_t lut_grid_axis(int i, int pixels, int cells) {
  lut_axis_t a;
  if (pixels < 2 || cells < 2) {
    a.index = 0;
    a.next = 0;
    a.frac = 0.0f;
    return a;
  }
  const int scaled = i * (cells - 1);
  a.index = scaled / (pixels - 1);
  a.next = a.index < cells - 1 ? 1 : 0;
  a.frac = (float)(scaled - a.index * (pixels - 1)) / (float)(pixels - 1);
  return a;
}

// The 4 grid corners around (u, v) in a table (M, N, depth): offsets and bilinear weights.
// Shared by the 3 channels of a pixel.
struct lut_cell_t {
  int base;  // offset of corner (u0, v0)
  int du, dv;
  float w00, w01, w10, w11;
};

__device__ __forceinline__ lut_cell_t lut_cell(lut_axis_t u, lut_axis_t v, int cols, int depth) {
  lut_cell_t c;
  c.base = (u.index * cols + v.index) * depth;
  c.du = u.next * cols * depth;
  c.dv = v.next * depth;
  c.w00 = (1.0f - u.frac) * (1.0f - v.frac);
  c.w01 = (1.0f - u.frac) * v.frac;
  c.w10 = u.frac * (1.0f - v.frac);
  c.w11 = u.frac * v.frac;
  return c;
}

// Trilinear lookup in one channel's table at the cell's position and knot coordinate `w` (knot
// units): the bilinear sums at the two knots around w, then the knot interpolation.
__device__ __forceinline__ float lut_trilinear(const float* __restrict__ table, lut_cell_t c,
                                               int depth, float w) {
  const lut_axis_t k = lut_axis(w, depth);
  const float* p = table + c.base + k.index;
  const int dk = k.next;
  const float lo = c.w00 * p[0] + c.w01 * p[c.dv] + (c.w10 * p[c.du] + c.w11 * p[c.du + c.dv]);
  const float hi = c.w00 * p[dk] + c.w01 * p[c.dv + dk] +
                   (c.w10 * p[c.du + dk] + c.w11 * p[c.du + c.dv + dk]);
  return lut_lerp(lo, hi, k.frac);
}

__device__ __forceinline__ float lut_blend(float x, float y, float a) {
  return a >= 1.0f ? y : x + a * (y - x);
}

// ---- sample conversion: float in [0, 1] <-> stored type -------------------------------------
// Integers: divide by full scale; back with round half up of clamp(v, 0, 1) * scale
// (layer_harmonizer.arrays.to_unit_float / from_unit_float).

__device__ __forceinline__ float lut_to_unit(float v) { return v; }
__device__ __forceinline__ float lut_to_unit(unsigned char v) { return (float)v / 255.0f; }
__device__ __forceinline__ float lut_to_unit(unsigned short v) { return (float)v / 65535.0f; }

__device__ __forceinline__ void lut_from_unit(float v, float* out) {
  *out = lut_clampf(v, 0.0f, 1.0f);
}
__device__ __forceinline__ void lut_from_unit(float v, unsigned char* out) {
  *out = (unsigned char)(int)lut_clampf(v * 255.0f + 0.5f, 0.0f, 255.0f);
}
__device__ __forceinline__ void lut_from_unit(float v, unsigned short* out) {
  *out = (unsigned short)(int)lut_clampf(v * 65535.0f + 0.5f, 0.0f, 65535.0f);
}

// Blend weight of pixel `pixel` (row-major index).
__device__ __forceinline__ float lut_weight(const float* __restrict__ mask, int has_mask,
                                            long long pixel, float strength) {
  return has_mask ? strength * mask[pixel] : strength;
}

// Transform the 3 channels of pixel (i, j) and store the blend with weight a > 0. The three
// first lookups are independent of each other, and so are the three second ones: doing them in
// two rounds, not channel after channel, lets a CPU overlap them (1.4x faster there).
template <typename T>
__device__ __forceinline__ void lut_pixel(const T* __restrict__ src, T* __restrict__ dst,
                                          const float* __restrict__ intervals,
                                          const float* __restrict__ colors, int i, int j,
                                          int height, int width, int rows, int cols, int knots,
                                          float a) {
  const lut_axis_t u = lut_grid_axis(i, height, rows);
  const lut_axis_t v = lut_grid_axis(j, width, cols);
  const lut_cell_t cell_k = lut_cell(u, v, cols, knots + 1);
  const lut_cell_t cell_f = lut_cell(u, v, cols, knots);
  const int plane = rows * cols;
  float x[3], x_hat[3];
  for (int c = 0; c < 3; ++c) {
    x[c] = lut_to_unit(src[c]);
    x_hat[c] = lut_trilinear(intervals + c * plane * (knots + 1), cell_k, knots + 1,
                             x[c] * (float)knots);
  }
  for (int c = 0; c < 3; ++c) {
    const float y = lut_trilinear(colors + c * plane * knots, cell_f, knots,
                                  x_hat[c] * (float)(knots - 1));
    lut_from_unit(lut_blend(x[c], lut_clampf(y, 0.0f, 1.0f), a), dst + c);
  }
}

// ---- entry points: one thread per pixel; index, bound check, blend --------------------------
// Arguments: image band (band_height, W, 3), its mask (band_height, W) float32 read only when
// has_mask != 0, the two LUT maps, the output band (band_height, W, 3) of the image's type,
// band_height, W, first_row (row of the full image where the band starts), H (full height),
// M, N, knots, strength. A whole image is the band first_row = 0, band_height = H.

template <typename T>
__device__ __forceinline__ void lut_apply(const T* __restrict__ image,
                                          const float* __restrict__ mask, int has_mask,
                                          const float* __restrict__ intervals,
                                          const float* __restrict__ colors, T* __restrict__ out,
                                          int band_height, int width, int first_row, int height,
                                          int rows, int cols, int knots, float strength, int i,
                                          int j) {
  if (i >= band_height || j >= width) return;
  const long long pixel = (long long)i * width + j;
  const T* src = image + pixel * 3;
  T* dst = out + pixel * 3;
  const float a = lut_weight(mask, has_mask, pixel, strength);
  if (a > 0.0f) {
    lut_pixel(src, dst, intervals, colors, first_row + i, j, height, width, rows, cols, knots, a);
  } else {  // untouched: the input value itself, bit for bit
    dst[0] = src[0];
    dst[1] = src[1];
    dst[2] = src[2];
  }
}

#define LUT_ENTRY_ARGS(T)                                                                     \
  const T *__restrict__ image, const float *__restrict__ mask, int has_mask,                  \
      const float *__restrict__ intervals, const float *__restrict__ colors,                  \
      T *__restrict__ out, int band_height, int width, int first_row, int height, int rows,   \
      int cols, int knots, float strength
#define LUT_ENTRY_BODY                                                                        \
  lut_apply(image, mask, has_mask, intervals, colors, out, band_height, width, first_row,     \
            height, rows, cols, knots, strength, (int)(blockIdx.y * blockDim.y + threadIdx.y), \
            (int)(blockIdx.x * blockDim.x + threadIdx.x))

extern "C" __global__ void __launch_bounds__(256) lut_apply_f32(LUT_ENTRY_ARGS(float)) {
  LUT_ENTRY_BODY;
}

extern "C" __global__ void __launch_bounds__(256) lut_apply_u8(LUT_ENTRY_ARGS(unsigned char)) {
  LUT_ENTRY_BODY;
}

extern "C" __global__ void __launch_bounds__(256) lut_apply_u16(LUT_ENTRY_ARGS(unsigned short)) {
  LUT_ENTRY_BODY;
}
