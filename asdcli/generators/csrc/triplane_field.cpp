// The triplane field of asdcli/generators/triplane.py, fused: for every sample, the bilinear lookups in three
// planes, the SDF head and the colour head (bias-free MLPs with one ReLU hidden layer) and the SDF's gradient
// with respect to the point, in one pass that keeps every per-sample intermediate in registers; the backward
// recomputes them instead of reading tensors back from memory. The eager version (mlp.py) runs the same maths
// as about sixty passes over [P, 3C or H, N] tensors, which is what the ShapesWorld step spent its time on.
//
// Layouts (float32, contiguous):
//   cells [P, 3, K, 4, C]  per plane and padded cell, the coefficients a, b, c, d of f(u, v) = a + b·u + c·v
//                          + d·u·v (mlp.triplane_cells, reordered so a cell's 4·C numbers are adjacent)
//   points [P, N, 3]      inside [-radius, radius]^3 (renderers clamp their samples); no gradient
//   w1s, w1c [3C, H]       first layers of the SDF and colour heads, transposed (input-major)
//   w2s [H]                the SDF head's last layer; w2c [O, H] the colour head's last layer
// Outputs: sdf [P, N] (with the sphere bias), colour [P, N, O], grad [P, N, 3] (d sdf / d point).

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <vector>

namespace {

struct Geometry {
  int64_t res;          // plane side R; the padded plane has (R + 1)^2 cells
  double radius;        // the field's box half-size
  double sphere_radius; // the analytic SDF bias
};

// Plane k reads (x, y), (x, z), (z, y): EG3D's planes with the corrected third axis order.
inline void plane_uv(const float* x, int k, float& u, float& v) {
  if (k == 0) { u = x[0]; v = x[1]; }
  else if (k == 1) { u = x[0]; v = x[2]; }
  else { u = x[2]; v = x[1]; }
}

// The padded cell holding (u, v) and the fractions inside it, as mlp.sample_triplanes_with_slopes computes
// them (align_corners=False, cell index clamped, fractions from the unclamped position).
inline int64_t cell_of(float u, float v, const Geometry& g, float& fu, float& fv) {
  const float r = static_cast<float>(g.res), inv = static_cast<float>(1.0 / g.radius);
  const float pu = ((u * inv + 1.0f) * r - 1.0f) / 2.0f, pv = ((v * inv + 1.0f) * r - 1.0f) / 2.0f;
  const float lu = std::floor(pu), lv = std::floor(pv);
  fu = pu - lu;
  fv = pv - lv;
  const int64_t iu = std::min<int64_t>(std::max<int64_t>(static_cast<int64_t>(lu), -1), g.res - 1) + 1;
  const int64_t iv = std::min<int64_t>(std::max<int64_t>(static_cast<int64_t>(lv), -1), g.res - 1) + 1;
  return iv * (g.res + 1) + iu;
}

// out[F] = Σ_h x[h] · m[h, :] for a row-major m [H, F]: F / 8 vector accumulators of 8 floats each, written
// with GCC's vector types because the compiler does not vectorise this loop nest on its own (F = 24 is not a
// multiple of its preferred 16).
typedef float v8 __attribute__((vector_size(32)));

template <int F, int H>
inline void rows_times(const float* m, const float* x, float* out) {
  static_assert(F % 8 == 0 && H % 4 == 0, "rows_times takes F a multiple of 8 and H of 4");
  // Four interleaved groups of rows: four independent chains of fused multiply-adds per output vector, so the
  // loop is not bound by the adds' latency.
  v8 acc[4][F / 8] = {};
  for (int h = 0; h < H; h += 4)
    for (int r = 0; r < 4; ++r) {
      const float xh = x[h + r];
      for (int q = 0; q < F / 8; ++q) {
        v8 row;
        __builtin_memcpy(&row, m + (h + r) * F + q * 8, sizeof(row));
        acc[r][q] += xh * row;
      }
    }
  for (int q = 0; q < F / 8; ++q) acc[0][q] += (acc[1][q] + acc[2][q]) + acc[3][q];
  __builtin_memcpy(out, acc[0], sizeof(acc[0]));
}

// Everything the forward pass computes for one sample; the backward recomputes it.
template <int C, int H>
struct Sample {
  static constexpr int F = 3 * C;
  float f[F], su[F], sv[F], fu[3], fv[3];
  int64_t cell[3];
  float hs[H], hc[H], e[H], df[F];

  void lookup(const float* cells, const float* x, const Geometry& g) {
    const int64_t k_cells = (g.res + 1) * (g.res + 1);
    for (int k = 0; k < 3; ++k) {
      float u, v;
      plane_uv(x, k, u, v);
      cell[k] = cell_of(u, v, g, fu[k], fv[k]);
      const float* a = cells + (k * k_cells + cell[k]) * 4 * C;
      const float *b = a + C, *c = a + 2 * C, *d = a + 3 * C;
      for (int i = 0; i < C; ++i) {
        const float slope_v = c[i] + fu[k] * d[i];
        f[k * C + i] = a[i] + fu[k] * b[i] + fv[k] * slope_v;
        su[k * C + i] = b[i] + fv[k] * d[i];
        sv[k * C + i] = slope_v;
      }
    }
  }

  // Hidden pre-activations of both heads, and d (SDF head) / d features.
  void heads(const float* w1s, const float* w2s, const float* w1c, const float* w1s_hf) {
    rows_times<H, F>(w1s, f, hs);
    rows_times<H, F>(w1c, f, hc);
    slopes(w2s, w1s_hf);
  }

  void slopes(const float* w2s, const float* w1s_hf) {
    for (int h = 0; h < H; ++h) e[h] = hs[h] > 0.f ? w2s[h] : 0.f;  // ReLU' is 0 at 0, as autograd's
    rows_times<F, H>(w1s_hf, e, df);
  }
};

inline float norm3(const float* x) { return std::sqrt(x[0] * x[0] + x[1] * x[1] + x[2] * x[2] + 1e-12f); }

template <int C, int H>
std::vector<torch::Tensor> forward_impl(const torch::Tensor& cells, const torch::Tensor& points,
                                        const torch::Tensor& w1s, const torch::Tensor& w2s,
                                        const torch::Tensor& w1c, const torch::Tensor& w2c,
                                        const torch::Tensor& w1s_hf, const Geometry& g) {
  const int64_t P = points.size(0), N = points.size(1);
  constexpr int O = 3;  // colour features (TriplaneGenerator's feature_head)
  const int64_t plane_stride = 3 * (g.res + 1) * (g.res + 1) * 4 * C;
  auto sdf = torch::empty({P, N}, points.options());
  auto colour = torch::empty({P, N, O}, points.options());
  auto grad = torch::empty({P, N, 3}, points.options());
  const float *cp = cells.data_ptr<float>(), *xp = points.data_ptr<float>();
  const float *ws = w1s.data_ptr<float>(), *vs = w2s.data_ptr<float>(), *wc = w1c.data_ptr<float>();
  const float *vc = w2c.data_ptr<float>(), *ws_hf = w1s_hf.data_ptr<float>();
  float *sp = sdf.data_ptr<float>(), *op = colour.data_ptr<float>(), *gp = grad.data_ptr<float>();
  const float scale = static_cast<float>(g.res / (2.0 * g.radius));  // texels per world unit
  at::parallel_for(0, P * N, 2048, [&](int64_t begin, int64_t end) {
    Sample<C, H> s;
    for (int64_t n = begin; n < end; ++n) {
      const float* x = xp + n * 3;
      s.lookup(cp + (n / N) * plane_stride, x, g);
      s.heads(ws, vs, wc, ws_hf);
      float value = 0.f;
      for (int h = 0; h < H; ++h) value += vs[h] * std::max(s.hs[h], 0.f);
      const float radial = norm3(x);
      sp[n] = value + radial - static_cast<float>(g.sphere_radius);
      for (int o = 0; o < O; ++o) {
        float acc = 0.f;
        for (int h = 0; h < H; ++h) acc += vc[o * H + h] * std::max(s.hc[h], 0.f);
        op[n * O + o] = acc;
      }
      float gu[3] = {0.f, 0.f, 0.f}, gv[3] = {0.f, 0.f, 0.f};
      for (int k = 0; k < 3; ++k)
        for (int i = 0; i < C; ++i) {
          gu[k] += s.df[k * C + i] * s.su[k * C + i];
          gv[k] += s.df[k * C + i] * s.sv[k * C + i];
        }
      gp[n * 3 + 0] = (gu[0] + gu[1]) * scale + x[0] / radial;
      gp[n * 3 + 1] = (gv[0] + gv[2]) * scale + x[1] / radial;
      gp[n * 3 + 2] = (gv[1] + gu[2]) * scale + x[2] / radial;
    }
  });
  return {sdf, colour, grad};
}

// Weight gradients of a block of samples, accumulated in registers row by row (per sample they would be
// read and written back from memory 3·F·H times).
template <int C, int H, int B>
struct Block {
  static constexpr int F = 3 * C;
  float f[B][F], g_df[B][F], g_hs[B][H], e[B][H], g_hc[B][H], v_s[B][H], r_c[B][H], g_col[B][3];

  void flush(int nb, float* dws, float* dwc, float* dvs, float* dvc) const {
    for (int j = 0; j < F; ++j) {
      float as[H], ac[H];
      for (int h = 0; h < H; ++h) { as[h] = dws[j * H + h]; ac[h] = dwc[j * H + h]; }
      for (int b = 0; b < nb; ++b) {
        const float fj = f[b][j], gj = g_df[b][j];
        for (int h = 0; h < H; ++h) {
          as[h] += fj * g_hs[b][h] + gj * e[b][h];  // df = w1s · (mask ⊙ w2s)
          ac[h] += fj * g_hc[b][h];
        }
      }
      for (int h = 0; h < H; ++h) { dws[j * H + h] = as[h]; dwc[j * H + h] = ac[h]; }
    }
    for (int b = 0; b < nb; ++b)
      for (int h = 0; h < H; ++h) dvs[h] += v_s[b][h];
    for (int o = 0; o < 3; ++o)
      for (int b = 0; b < nb; ++b)
        for (int h = 0; h < H; ++h) dvc[o * H + h] += g_col[b][o] * r_c[b][h];
  }
};

// The weights both passes read, with the input-major copies of the first layers (see rows_times).
struct Weights {
  const float *w1s, *w2s, *w1c, *w2c, *w1s_hf, *w1c_hf;
};

// One sample's backward: upstream gradients g_sdf, g_col [3], g_grad [3] (times `scale`, texels per world unit)
// → its rows of the block (weight gradients, flushed per block) and its cells' gradients `dcell` (the prompt's
// [3, K, 4, C] slice). `s` holds the sample's recomputed forward values.
template <int C, int H, int B>
void sample_backward(const Sample<C, H>& s, const Weights& w, float g_sdf, const float* g_col, const float* g_grad,
                     float scale, int64_t k_cells, int b, Block<C, H, B>& blk, float* dcell) {
  constexpr int F = 3 * C, O = 3;
  const float gx = g_grad[0] * scale, gy = g_grad[1] * scale, gz = g_grad[2] * scale;
  const float g_u[3] = {gx, gx, gz}, g_v[3] = {gy, gz, gy};  // planes xy, xz, zy read (u, v) = (x,y), (x,z), (z,y)
  float g_e[H], g_hs[H], g_hc[H];  // locals (not the block's arrays) so the loops below vectorise
  for (int o = 0; o < O; ++o) blk.g_col[b][o] = g_col[o];
  for (int h = 0; h < H; ++h) {  // both heads' last layers and ReLUs
    float acc = 0.f;
    for (int o = 0; o < O; ++o) acc += w.w2c[o * H + h] * g_col[o];
    g_hc[h] = s.hc[h] > 0.f ? acc : 0.f;
    g_hs[h] = s.hs[h] > 0.f ? g_sdf * w.w2s[h] : 0.f;
  }
  float g_f[F], g_fs[F], g_su[F], g_sv[F], g_df[F];
  for (int j = 0; j < F; ++j) {
    const int k = j / C;
    g_df[j] = g_u[k] * s.su[j] + g_v[k] * s.sv[j];  // through the gradient's chain rule
    g_su[j] = g_u[k] * s.df[j];
    g_sv[j] = g_v[k] * s.df[j];
  }
  rows_times<H, F>(w.w1s, g_df, g_e);  // d loss / d (mask ⊙ w2s), since df = w1s · (mask ⊙ w2s)
  rows_times<F, H>(w.w1c_hf, g_hc, g_f);  // g_f = w1c · g_hc + w1s · g_hs
  rows_times<F, H>(w.w1s_hf, g_hs, g_fs);
  for (int j = 0; j < F; ++j) {
    g_f[j] += g_fs[j];
    blk.f[b][j] = s.f[j];
    blk.g_df[b][j] = g_df[j];
  }
  for (int h = 0; h < H; ++h) {
    blk.g_hc[b][h] = g_hc[h];
    blk.g_hs[b][h] = g_hs[h];
    blk.e[b][h] = s.e[h];
    blk.r_c[b][h] = std::max(s.hc[h], 0.f);
    blk.v_s[b][h] = g_sdf * std::max(s.hs[h], 0.f) + (s.hs[h] > 0.f ? g_e[h] : 0.f);
  }
  for (int k = 0; k < 3; ++k) {  // f = a + fu·b + fv·c + fu·fv·d, su = b + fv·d, sv = c + fu·d
    float* d = dcell + (k * k_cells + s.cell[k]) * 4 * C;
    const float fu = s.fu[k], fv = s.fv[k];
    for (int c = 0; c < C; ++c) {
      const int j = k * C + c;
      d[c] += g_f[j];
      d[C + c] += fu * g_f[j] + g_su[j];
      d[2 * C + c] += fv * g_f[j] + g_sv[j];
      d[3 * C + c] += fu * fv * g_f[j] + fv * g_su[j] + fu * g_sv[j];
    }
  }
}

// Per prompt (one task each, so the prompt's cell gradients have one writer): the gradients of the cells and
// this prompt's share of the weight gradients (summed over prompts by the caller).
template <int C, int H>
std::vector<torch::Tensor> backward_impl(const torch::Tensor& cells, const torch::Tensor& points, const Weights& w,
                                         const torch::Tensor& g_sdf, const torch::Tensor& g_col,
                                         const torch::Tensor& g_grad, const Geometry& g) {
  constexpr int F = 3 * C, B = 8, O = 3;
  const int64_t P = points.size(0), N = points.size(1);
  const int64_t plane_stride = 3 * (g.res + 1) * (g.res + 1) * 4 * C, k_cells = (g.res + 1) * (g.res + 1);
  auto g_cells = torch::zeros_like(cells);
  auto g_w1s = torch::zeros({P, F, H}, points.options()), g_w1c = torch::zeros({P, F, H}, points.options());
  auto g_w2s = torch::zeros({P, H}, points.options()), g_w2c = torch::zeros({P, O, H}, points.options());
  const float *cp = cells.data_ptr<float>(), *xp = points.data_ptr<float>();
  const float *gs = g_sdf.data_ptr<float>(), *gc = g_col.data_ptr<float>(), *gg = g_grad.data_ptr<float>();
  float *dc = g_cells.data_ptr<float>(), *dws = g_w1s.data_ptr<float>(), *dwc = g_w1c.data_ptr<float>();
  float *dvs = g_w2s.data_ptr<float>(), *dvc = g_w2c.data_ptr<float>();
  const float scale = static_cast<float>(g.res / (2.0 * g.radius));
  at::parallel_for(0, P, 1, [&](int64_t begin, int64_t end) {
    Sample<C, H> s;
    auto blk = std::make_unique<Block<C, H, B>>();
    for (int64_t p = begin; p < end; ++p) {
      for (int64_t i0 = 0; i0 < N; i0 += B) {
        const int nb = static_cast<int>(std::min<int64_t>(B, N - i0));
        for (int b = 0; b < nb; ++b) {
          const int64_t n = p * N + i0 + b;
          s.lookup(cp + p * plane_stride, xp + n * 3, g);
          s.heads(w.w1s, w.w2s, w.w1c, w.w1s_hf);
          sample_backward<C, H, B>(s, w, gs[n], gc + n * O, gg + n * 3, scale, k_cells, b, *blk,
                                   dc + p * plane_stride);
        }
        blk->flush(nb, dws + p * F * H, dwc + p * F * H, dvs + p * H, dvc + p * O * H);
      }
    }
  });
  return {g_cells, g_w1s.sum(0), g_w2s.sum(0), g_w1c.sum(0), g_w2c.sum(0)};
}

void check(const torch::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == torch::kFloat32 && t.is_contiguous(), name,
              " must be a contiguous float32 CPU tensor");
}

#define DISPATCH(C_, H_, CALL)                                                          \
  if (c == C_ && h == H_) return CALL<C_, H_>

std::vector<torch::Tensor> forward(torch::Tensor cells, torch::Tensor points, torch::Tensor w1s,
                                   torch::Tensor w2s, torch::Tensor w1c, torch::Tensor w2c, torch::Tensor w1s_hf,
                                   torch::Tensor w1c_hf, int64_t res,
                                   double radius, double sphere_radius) {
  for (auto& [t, n] : {std::pair{cells, "cells"}, {points, "points"}, {w1s, "w1s"}, {w2s, "w2s"}, {w1c, "w1c"},
                       {w2c, "w2c"}, {w1s_hf, "w1s_hf"}, {w1c_hf, "w1c_hf"}})
    check(t, n);
  const int64_t c = cells.size(-1), h = w1s.size(1);
  TORCH_CHECK(w2c.size(0) == 3, "the fused triplane kernel takes 3 colour features, not ", w2c.size(0));
  const Geometry g{res, radius, sphere_radius};
  DISPATCH(8, 32, forward_impl)(cells, points, w1s, w2s, w1c, w2c, w1s_hf, g);
  DISPATCH(16, 64, forward_impl)(cells, points, w1s, w2s, w1c, w2c, w1s_hf, g);
  TORCH_CHECK(false, "no fused triplane kernel for plane_channels ", c, ", hidden ", h);
}

std::vector<torch::Tensor> backward(torch::Tensor cells, torch::Tensor points, torch::Tensor w1s,
                                    torch::Tensor w2s, torch::Tensor w1c, torch::Tensor w2c, torch::Tensor w1s_hf,
                                    torch::Tensor w1c_hf, torch::Tensor g_sdf,
                                    torch::Tensor g_col, torch::Tensor g_grad, int64_t res, double radius,
                                    double sphere_radius) {
  for (auto& [t, n] : {std::pair{g_sdf, "g_sdf"}, {g_col, "g_col"}, {g_grad, "g_grad"}}) check(t, n);
  const int64_t c = cells.size(-1), h = w1s.size(1);
  TORCH_CHECK(w2c.size(0) == 3, "the fused triplane kernel takes 3 colour features, not ", w2c.size(0));
  const Geometry g{res, radius, sphere_radius};
  const Weights w{w1s.data_ptr<float>(), w2s.data_ptr<float>(), w1c.data_ptr<float>(), w2c.data_ptr<float>(),
                  w1s_hf.data_ptr<float>(), w1c_hf.data_ptr<float>()};
  DISPATCH(8, 32, backward_impl)(cells, points, w, g_sdf, g_col, g_grad, g);
  DISPATCH(16, 64, backward_impl)(cells, points, w, g_sdf, g_col, g_grad, g);
  TORCH_CHECK(false, "no fused triplane kernel for plane_channels ", c, ", hidden ", h);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "fused triplane field: sdf, colour, d sdf / d point");
  m.def("backward", &backward, "its backward: cells and weight gradients");
}
