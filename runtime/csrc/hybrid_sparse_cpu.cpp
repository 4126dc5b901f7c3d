// Fast CPU kernels of crisp's hybrid N:M + block sparse convolution and GEMM.
//
// The weight arrives packed row by row (see crisp/runtime/packed_weight.py): for every output
// channel r, the kept values vals[row_ptr[r]:row_ptr[r+1]] and the GEMM columns they multiply,
// cols[...] in (kh, kw, cin) order. Pruned blocks and pruned N:M entries are simply absent, so
// the kernel does one multiply-add per kept weight and output position, never more.
//
// Convolution without im2col: the input is laid out once per call as "phase planes" (for stride
// s, the s*s sub-images x[.., i*s+py, j*s+px] of the zero-padded input; for stride 1 that is the
// padded input itself, and for an unpadded stride-1 conv the input tensor as it is). In those
// planes the input that a weight column (kh, kw, cin) meets at output (oh, ow) sits at
// colofs[col] + oh*Wq + ow, so for a run of output positions on the "q grid" q = oh*Wq + ow the
// operand is a contiguous vector. The kernel accumulates 64 consecutive q positions of two output
// channels in registers, adds bias / residual, applies ReLU and stores only valid positions.
// Work items (sample, q tile, channel chunk) are shared out dynamically over at::parallel_for.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <vector>

namespace crisp_cpu {
namespace {

constexpr int64_t kLanes = 16;                // floats per vector (one AVX-512 register)
constexpr int64_t kVecs = 4;                  // vectors per tile
constexpr int64_t kTile = kLanes * kVecs;     // output positions accumulated at once

typedef float vf __attribute__((vector_size(kLanes * sizeof(float))));

inline vf loadu(const float* p) {
  vf v;
  std::memcpy(&v, p, sizeof(vf));
  return v;
}

inline vf splat(float w) {
  const vf zero = {};
  return zero + w;  // a scalar operand is broadcast to every lane
}

// Where the operand of every GEMM column lives, and how output positions map to the q grid.
struct Source {
  const float* sample0 = nullptr;  // start of sample 0
  const float* last = nullptr;     // start of the last sample (may be a padded copy)
  int64_t sample_stride = 0;       // floats between samples (for samples before the last)
  int64_t samples = 0;
  int64_t wq = 0;                  // q-grid row width
  int64_t oh = 0, ow = 0;          // valid output rows / columns
  std::vector<int64_t> colofs;     // per GEMM column: offset of its operand at q = 0
  const float* sample(int64_t n) const { return n + 1 == samples ? last : sample0 + n * sample_stride; }
  int64_t q_count() const { return (oh - 1) * wq + ow; }
};

// Where outputs go: out[n*out_n + r*out_r + (oh*ow_count + ow)*out_p].
struct Sink {
  float* out = nullptr;
  int64_t out_n = 0, out_r = 0, out_p = 1;
  const float* residual = nullptr;  // same layout as out, or null
  const float* bias = nullptr;      // [rows] or null
  bool relu = false;
};

struct Weights {
  const int64_t* row_ptr;
  const int32_t* cols;
  const float* vals;
  int64_t rows;
};

// acc[0..kVecs) += sum_v vals[v] * x[off(v) ...]; two rows share the loop to keep eight
// independent FMA chains in flight.
inline void accumulate_pair(const float* x, const int64_t* colofs, const int32_t* ca, const float* va, int64_t la,
                            const int32_t* cb, const float* vb, int64_t lb, vf* acc_a, vf* acc_b) {
  vf a0 = acc_a[0], a1 = acc_a[1], a2 = acc_a[2], a3 = acc_a[3];
  vf b0 = acc_b[0], b1 = acc_b[1], b2 = acc_b[2], b3 = acc_b[3];
  const int64_t common = std::min(la, lb);
  int64_t v = 0;
  for (; v < common; ++v) {
    const float* pa = x + colofs[ca[v]];
    const float* pb = x + colofs[cb[v]];
    const vf wa = splat(va[v]);
    const vf wb = splat(vb[v]);
    a0 += wa * loadu(pa);
    b0 += wb * loadu(pb);
    a1 += wa * loadu(pa + kLanes);
    b1 += wb * loadu(pb + kLanes);
    a2 += wa * loadu(pa + 2 * kLanes);
    b2 += wb * loadu(pb + 2 * kLanes);
    a3 += wa * loadu(pa + 3 * kLanes);
    b3 += wb * loadu(pb + 3 * kLanes);
  }
  for (int64_t u = v; u < la; ++u) {
    const float* pa = x + colofs[ca[u]];
    const vf wa = splat(va[u]);
    a0 += wa * loadu(pa);
    a1 += wa * loadu(pa + kLanes);
    a2 += wa * loadu(pa + 2 * kLanes);
    a3 += wa * loadu(pa + 3 * kLanes);
  }
  for (int64_t u = v; u < lb; ++u) {
    const float* pb = x + colofs[cb[u]];
    const vf wb = splat(vb[u]);
    b0 += wb * loadu(pb);
    b1 += wb * loadu(pb + kLanes);
    b2 += wb * loadu(pb + 2 * kLanes);
    b3 += wb * loadu(pb + 3 * kLanes);
  }
  acc_a[0] = a0; acc_a[1] = a1; acc_a[2] = a2; acc_a[3] = a3;
  acc_b[0] = b0; acc_b[1] = b1; acc_b[2] = b2; acc_b[3] = b3;
}

inline vf relu_v(vf v) {
  const vf zero = {};
  return v > zero ? v : zero;
}

// Store the valid positions of one tile of one output row: bias, residual, ReLU fused.
inline void store_tile(const Source& src, const Sink& sink, int64_t n, int64_t r, int64_t q0, vf* acc) {
  const vf bias = splat(sink.bias ? sink.bias[r] : 0.f);
  for (int64_t i = 0; i < kVecs; ++i) acc[i] += bias;
  const int64_t q_count = src.q_count();
  float* out = sink.out + n * sink.out_n + r * sink.out_r;
  const float* res = sink.residual ? sink.residual + n * sink.out_n + r * sink.out_r : nullptr;
  if (src.wq == src.ow && sink.out_p == 1 && q0 + kTile <= q_count) {
    // the tile is kTile consecutive outputs: store straight from the registers
    float* o = out + q0;
    for (int64_t i = 0; i < kVecs; ++i) {
      vf y = acc[i];
      if (res) y += loadu(res + q0 + i * kLanes);
      if (sink.relu) y = relu_v(y);
      std::memcpy(o + i * kLanes, &y, sizeof(vf));
    }
    return;
  }
  if (sink.relu && !res)
    for (int64_t i = 0; i < kVecs; ++i) acc[i] = relu_v(acc[i]);
  alignas(64) float tmp[kTile];
  std::memcpy(tmp, acc, sizeof(tmp));
  const int64_t q_end = std::min(q0 + kTile, q_count);
  int64_t q = q0;
  while (q < q_end) {
    const int64_t oh = q / src.wq, ow = q % src.wq;
    const int64_t seg = std::min(q_end - q, src.wq - ow);
    const int64_t valid = std::max<int64_t>(0, std::min(seg, src.ow - ow));
    const float* t = tmp + (q - q0);
    const int64_t p0 = oh * src.ow + ow;
    if (sink.out_p == 1 && !res) {
      std::memcpy(out + p0, t, sizeof(float) * valid);
    } else if (sink.out_p == 1) {
      float* o = out + p0;
      const float* rr = res + p0;
      if (sink.relu) {
        for (int64_t u = 0; u < valid; ++u) o[u] = std::max(t[u] + rr[u], 0.f);
      } else {
        for (int64_t u = 0; u < valid; ++u) o[u] = t[u] + rr[u];
      }
    } else {
      for (int64_t u = 0; u < valid; ++u) {
        float y = t[u];
        if (res) y += res[(p0 + u) * sink.out_p];
        if (sink.relu) y = y > 0.f ? y : 0.f;
        out[(p0 + u) * sink.out_p] = y;
      }
    }
    q += seg;
  }
}

void run_tiles(const Source& src, const Weights& w, const Sink& sink) {
  const int64_t tiles = (src.q_count() + kTile - 1) / kTile;
  const int64_t base_items = src.samples * tiles;
  if (base_items == 0 || w.rows == 0) return;
  const int64_t threads = std::max<int>(1, at::get_num_threads());
  // split output channels too when there are few tiles (small images, batch 1)
  int64_t chunks = std::max<int64_t>(1, (4 * threads + base_items - 1) / base_items);
  chunks = std::min(chunks, std::max<int64_t>(1, w.rows / 16));
  int64_t chunk_rows = (w.rows + chunks - 1) / chunks;
  chunk_rows += chunk_rows & 1;
  chunks = (w.rows + chunk_rows - 1) / chunk_rows;
  const int64_t items = base_items * chunks;
  const int64_t* colofs = src.colofs.data();
  std::atomic<int64_t> next{0};
  auto work = [&](int64_t, int64_t) {
    for (;;) {
      const int64_t item = next.fetch_add(1, std::memory_order_relaxed);
      if (item >= items) break;
      const int64_t chunk = item % chunks;
      const int64_t tile = (item / chunks) % tiles;
      const int64_t n = item / (chunks * tiles);
      const int64_t q0 = tile * kTile;
      const float* x = src.sample(n) + q0;
      const int64_t r_begin = chunk * chunk_rows, r_end = std::min(w.rows, r_begin + chunk_rows);
      for (int64_t r = r_begin; r < r_end; r += 2) {
        vf acc_a[kVecs] = {}, acc_b[kVecs] = {};
        const int64_t ra = w.row_ptr[r], la = w.row_ptr[r + 1] - ra;
        if (r + 1 < r_end) {
          const int64_t rb = w.row_ptr[r + 1], lb = w.row_ptr[r + 2] - rb;
          accumulate_pair(x, colofs, w.cols + ra, w.vals + ra, la, w.cols + rb, w.vals + rb, lb, acc_a, acc_b);
          store_tile(src, sink, n, r, q0, acc_a);
          store_tile(src, sink, n, r + 1, q0, acc_b);
        } else {
          accumulate_pair(x, colofs, w.cols + ra, w.vals + ra, la, nullptr, nullptr, 0, acc_a, acc_b);
          store_tile(src, sink, n, r, q0, acc_a);
        }
      }
    }
  };
  if (items == 1 || threads == 1) {
    work(0, 1);
  } else {
    at::parallel_for(0, threads, 1, work);
  }
}

// Cheap structural checks only (O(rows)); the column range of every entry is checked once when
// the weight is packed (PackedHybridWeight.validate), not on every call.
void check_weights(const at::Tensor& row_ptr, const at::Tensor& cols, const at::Tensor& vals) {
  TORCH_CHECK(row_ptr.scalar_type() == at::kLong && row_ptr.dim() == 1 && row_ptr.is_contiguous() && row_ptr.numel() >= 1,
              "crisp: row_ptr must be a contiguous int64 vector of rows + 1 entries");
  TORCH_CHECK(cols.scalar_type() == at::kInt && cols.dim() == 1 && cols.is_contiguous(),
              "crisp: cols must be a contiguous int32 vector");
  TORCH_CHECK(vals.scalar_type() == at::kFloat && vals.dim() == 1 && vals.is_contiguous() && vals.numel() == cols.numel(),
              "crisp: vals must be a contiguous float32 vector as long as cols");
  const int64_t rows = row_ptr.numel() - 1;
  const int64_t* rp = row_ptr.data_ptr<int64_t>();
  TORCH_CHECK(rp[0] == 0 && rp[rows] == cols.numel(), "crisp: row_ptr does not span cols");
  for (int64_t r = 0; r < rows; ++r) TORCH_CHECK(rp[r + 1] >= rp[r], "crisp: row_ptr must not decrease");
}

int64_t pair_arg(c10::IntArrayRef a, int64_t i, const char* what) {
  TORCH_CHECK(a.size() == 1 || a.size() == 2, "crisp: ", what, " must have 1 or 2 entries");
  return a.size() == 1 ? a[0] : a[i];
}

// Copy one (sample, phase, channel) plane of the zero-padded input into its phase plane.
void fill_plane(const float* x, int64_t h, int64_t w, int64_t py, int64_t px, int64_t sh, int64_t sw, int64_t ph,
                int64_t pw, float* dst, int64_t hq, int64_t wq) {
  // valid j: 0 <= j*sw + px - pw < w
  const int64_t jlo = std::min(wq, std::max<int64_t>(0, (pw - px + sw - 1) / sw));
  const int64_t jhi = std::max(jlo, std::min(wq, (w + pw - px + sw - 1) / sw));
  for (int64_t i = 0; i < hq; ++i) {
    float* d = dst + i * wq;
    const int64_t row = i * sh + py - ph;
    if (row < 0 || row >= h) {
      std::memset(d, 0, sizeof(float) * wq);
      continue;
    }
    if (jlo > 0) std::memset(d, 0, sizeof(float) * jlo);
    const float* s = x + row * w + (jlo * sw + px - pw);
    if (sw == 1) {
      std::memcpy(d + jlo, s, sizeof(float) * (jhi - jlo));
    } else {
      for (int64_t j = jlo; j < jhi; ++j) d[j] = s[(j - jlo) * sw];
    }
    if (jhi < wq) std::memset(d + jhi, 0, sizeof(float) * (wq - jhi));
  }
}

at::Tensor conv2d_fast(const at::Tensor& x_in, const at::Tensor& row_ptr, const at::Tensor& cols, const at::Tensor& vals,
                       int64_t in_features, const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& residual,
                       c10::IntArrayRef kernel_size, c10::IntArrayRef stride, c10::IntArrayRef padding,
                       c10::IntArrayRef dilation, bool relu) {
  TORCH_CHECK(x_in.dim() == 4, "crisp: conv input must be [N, C, H, W], got ", x_in.dim(), " dims");
  TORCH_CHECK(x_in.scalar_type() == at::kFloat, "crisp: the cpu kernels run float32, got ", x_in.scalar_type());
  const at::Tensor x = x_in.contiguous();
  const int64_t n_s = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
  const int64_t kh = pair_arg(kernel_size, 0, "kernel_size"), kw = pair_arg(kernel_size, 1, "kernel_size");
  const int64_t sh = pair_arg(stride, 0, "stride"), sw = pair_arg(stride, 1, "stride");
  const int64_t ph = pair_arg(padding, 0, "padding"), pw = pair_arg(padding, 1, "padding");
  const int64_t dh = pair_arg(dilation, 0, "dilation"), dw = pair_arg(dilation, 1, "dilation");
  TORCH_CHECK(sh >= 1 && sw >= 1 && dh >= 1 && dw >= 1 && ph >= 0 && pw >= 0 && kh >= 1 && kw >= 1,
              "crisp: invalid conv geometry");
  const int64_t k = kh * kw * c;
  TORCH_CHECK(k == in_features, "crisp: the packed weight has ", in_features, " input features but a ", kh, "x", kw,
              " conv over ", c, " channels has ", k);
  check_weights(row_ptr, cols, vals);
  const int64_t rows = row_ptr.numel() - 1;
  const int64_t oh = (h + 2 * ph - dh * (kh - 1) - 1) / sh + 1;
  const int64_t ow = (w + 2 * pw - dw * (kw - 1) - 1) / sw + 1;
  TORCH_CHECK(oh >= 1 && ow >= 1, "crisp: conv output would be empty for input ", h, "x", w);
  at::Tensor out = at::empty({n_s, rows, oh, ow}, x.options());
  if (n_s == 0 || rows == 0) return out;

  // phase planes: which (py, px) the kernel taps use
  std::vector<int64_t> phase_index(sh * sw, -1);
  int64_t phases = 0;
  for (int64_t a = 0; a < kh; ++a)
    for (int64_t b = 0; b < kw; ++b) {
      int64_t& idx = phase_index[((a * dh) % sh) * sw + (b * dw) % sw];
      if (idx < 0) idx = phases++;
    }
  const bool direct = sh == 1 && sw == 1 && ph == 0 && pw == 0;
  const int64_t hq = direct ? h : (h + 2 * ph + sh - 1) / sh;
  const int64_t wq = direct ? w : (w + 2 * pw + sw - 1) / sw;
  const int64_t plane = hq * wq;
  const int64_t sample_size = phases * c * plane;

  Source src;
  src.samples = n_s;
  src.wq = wq;
  src.oh = oh;
  src.ow = ow;
  src.colofs.resize(k);
  int64_t max_off = 0;
  for (int64_t a = 0; a < kh; ++a)
    for (int64_t b = 0; b < kw; ++b) {
      const int64_t p = phase_index[((a * dh) % sh) * sw + (b * dw) % sw];
      const int64_t base = ((a * dh) / sh) * wq + (b * dw) / sw;
      for (int64_t ci = 0; ci < c; ++ci) {
        const int64_t off = (p * c + ci) * plane + base;
        src.colofs[(a * kw + b) * c + ci] = off;
        max_off = std::max(max_off, off);
      }
    }
  const int64_t tiles = (src.q_count() + kTile - 1) / kTile;
  const int64_t reach = max_off + tiles * kTile;  // floats a sample's reads may touch from its start

  at::Tensor buffer, last_copy;
  const float* xd = x.data_ptr<float>();
  if (direct) {
    src.sample0 = xd;
    src.sample_stride = sample_size;
    src.last = xd + (n_s - 1) * sample_size;
    if (reach > sample_size) {  // the last sample's final tile would read past the tensor
      last_copy = at::zeros({reach}, x.options());
      std::memcpy(last_copy.data_ptr<float>(), src.last, sizeof(float) * sample_size);
      src.last = last_copy.data_ptr<float>();
    }
  } else {
    const int64_t slack = std::max<int64_t>(0, reach - sample_size);
    buffer = at::empty({n_s * sample_size + slack}, x.options());
    float* bd = buffer.data_ptr<float>();
    if (slack) std::memset(bd + n_s * sample_size, 0, sizeof(float) * slack);
    const int64_t planes = n_s * phases * c;
    std::vector<std::pair<int64_t, int64_t>> phase_yx(phases);
    for (int64_t py = 0; py < sh; ++py)
      for (int64_t px = 0; px < sw; ++px)
        if (phase_index[py * sw + px] >= 0) phase_yx[phase_index[py * sw + px]] = {py, px};
    at::parallel_for(0, planes, std::max<int64_t>(1, 16384 / std::max<int64_t>(1, plane)), [&](int64_t b0, int64_t b1) {
      for (int64_t i = b0; i < b1; ++i) {
        const int64_t ci = i % c, p = (i / c) % phases, ni = i / (c * phases);
        fill_plane(xd + (ni * c + ci) * h * w, h, w, phase_yx[p].first, phase_yx[p].second, sh, sw, ph, pw,
                   bd + i * plane, hq, wq);
      }
    });
    src.sample0 = bd;
    src.sample_stride = sample_size;
    src.last = bd + (n_s - 1) * sample_size;
  }

  Sink sink;
  sink.out = out.data_ptr<float>();
  sink.out_n = rows * oh * ow;
  sink.out_r = oh * ow;
  sink.out_p = 1;
  sink.relu = relu;
  at::Tensor bias_c, res_c;
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->numel() == rows, "crisp: bias must have ", rows, " entries");
    bias_c = bias->to(at::kFloat).contiguous();
    sink.bias = bias_c.data_ptr<float>();
  }
  if (residual.has_value() && residual->defined()) {
    TORCH_CHECK(residual->sizes() == out.sizes(), "crisp: residual must have the output's shape ", out.sizes());
    res_c = residual->to(at::kFloat).contiguous();
    sink.residual = res_c.data_ptr<float>();
  }
  Weights wts{row_ptr.data_ptr<int64_t>(), cols.data_ptr<int32_t>(), vals.data_ptr<float>(), rows};
  run_tiles(src, wts, sink);
  return out;
}

// Few rows of input (e.g. a classifier at batch 1): one dot product per output, rows in parallel.
void linear_dots(const float* x, int64_t m, int64_t k, const Weights& w, const float* bias, bool relu, float* out) {
  at::parallel_for(0, w.rows, 64, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t b = w.row_ptr[r], e = w.row_ptr[r + 1];
      for (int64_t i = 0; i < m; ++i) {
        const float* xi = x + i * k;
        float s0 = 0.f, s1 = 0.f, s2 = 0.f, s3 = 0.f;
        int64_t v = b;
        for (; v + 4 <= e; v += 4) {
          s0 += w.vals[v] * xi[w.cols[v]];
          s1 += w.vals[v + 1] * xi[w.cols[v + 1]];
          s2 += w.vals[v + 2] * xi[w.cols[v + 2]];
          s3 += w.vals[v + 3] * xi[w.cols[v + 3]];
        }
        for (; v < e; ++v) s0 += w.vals[v] * xi[w.cols[v]];
        float y = (s0 + s1) + (s2 + s3) + (bias ? bias[r] : 0.f);
        if (relu) y = y > 0.f ? y : 0.f;
        out[i * w.rows + r] = y;
      }
    }
  });
}

at::Tensor linear_fast(const at::Tensor& x_in, const at::Tensor& row_ptr, const at::Tensor& cols, const at::Tensor& vals,
                       int64_t in_features, const std::optional<at::Tensor>& bias, bool relu) {
  TORCH_CHECK(x_in.dim() >= 1, "crisp: linear input needs at least one dimension");
  TORCH_CHECK(x_in.scalar_type() == at::kFloat, "crisp: the cpu kernels run float32, got ", x_in.scalar_type());
  const int64_t k = x_in.size(-1);
  TORCH_CHECK(k == in_features, "crisp: the packed weight has ", in_features, " input features, the input has ", k);
  check_weights(row_ptr, cols, vals);
  const int64_t rows = row_ptr.numel() - 1;
  std::vector<int64_t> out_shape(x_in.sizes().begin(), x_in.sizes().end());
  out_shape.back() = rows;
  const at::Tensor x = x_in.reshape({-1, k}).contiguous();
  const int64_t m = x.size(0);
  at::Tensor out = at::empty({m, rows}, x.options());
  at::Tensor bias_c;
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->numel() == rows, "crisp: bias must have ", rows, " entries");
    bias_c = bias->to(at::kFloat).contiguous();
  }
  Weights wts{row_ptr.data_ptr<int64_t>(), cols.data_ptr<int32_t>(), vals.data_ptr<float>(), rows};
  if (m > 0 && rows > 0) {
    const float* bp = bias_c.defined() ? bias_c.data_ptr<float>() : nullptr;
    if (m < kLanes) {
      linear_dots(x.data_ptr<float>(), m, k, wts, bp, relu, out.data_ptr<float>());
    } else {
      // many rows: transpose to [K, M] (+ slack) and run the tile kernel over M positions
      at::Tensor xt = at::zeros({k * m + kTile}, x.options());
      float* xtd = xt.data_ptr<float>();
      const float* xd = x.data_ptr<float>();
      at::parallel_for(0, k, 64, [&](int64_t c0, int64_t c1) {
        for (int64_t ci = c0; ci < c1; ++ci)
          for (int64_t i = 0; i < m; ++i) xtd[ci * m + i] = xd[i * k + ci];
      });
      Source src;
      src.sample0 = src.last = xtd;
      src.samples = 1;
      src.wq = m;
      src.oh = 1;
      src.ow = m;
      src.colofs.resize(k);
      for (int64_t ci = 0; ci < k; ++ci) src.colofs[ci] = ci * m;
      Sink sink;
      sink.out = out.data_ptr<float>();
      sink.out_n = 0;
      sink.out_r = 1;
      sink.out_p = rows;
      sink.bias = bp;
      sink.relu = relu;
      run_tiles(src, wts, sink);
    }
  }
  return out.reshape(out_shape);
}

}  // namespace
}  // namespace crisp_cpu

TORCH_LIBRARY_FRAGMENT(crisp, m) {
  m.def(
      "hybrid_sparse_conv2d_fast(Tensor x, Tensor row_ptr, Tensor cols, Tensor vals, int in_features, Tensor? bias, Tensor? residual, "
      "int[] kernel_size, int[] stride, int[] padding, int[] dilation, bool relu) -> Tensor");
  m.def("hybrid_sparse_linear_fast(Tensor x, Tensor row_ptr, Tensor cols, Tensor vals, int in_features, Tensor? bias, bool relu) -> Tensor");
}

TORCH_LIBRARY_IMPL(crisp, CPU, m) {
  m.impl("hybrid_sparse_conv2d_fast", &crisp_cpu::conv2d_fast);
  m.impl("hybrid_sparse_linear_fast", &crisp_cpu::linear_fast);
}
