// A 1x1 expansion conv and the depthwise conv it feeds, fused (MobileNetV2's inverted residual
// blocks): y = clamp_d(bias_d + depthwise(clamp_e(bias_e + W_e x))), without writing the expanded
// tensor. Written out, that tensor (96 x 112 x 112 floats = 4.8 MB at MobileNetV2's features.2)
// leaves L2 between the two layers, and the depthwise conv reads it back from memory.
//
// A work item is (sample, 16 expanded channels, band of output rows). It keeps a ring of the
// kh * dilation input rows its depthwise windows read (16 channels each, zero padding columns
// on both sides: L1-sized), computes each expanded row once with the dense GEMM tile into it, and
// runs the depthwise windows of each output row from the ring. Bands only split the rows when
// there are too few channel groups for the threads (each band recomputes the rows its windows
// share with the band before it).
//
// Included by hybrid_sparse_cpu.cpp after the dense GEMM kernel, whose tile and sink it reuses.
#pragma once

// One register tile of the depthwise conv: PX output pixels (live of them stored) x 16 channels
// (VV vectors, live_channels of them stored) from ring rows rp[0 .. kh): pixel p's tap (a, b)
// reads rp[a] + x_at + b * b_step + off[p]; bias and clamp fused into the store. The loops over
// pixels and vectors unroll, so the accumulators stay in registers.
template <int PX, int VV>
inline void depthwise_tile(const float* const* rp, int64_t kh, int64_t kw, int64_t x_at, int64_t b_step,
                           const int64_t (&off)[PX], const float* wd, int64_t wstride, const float* bd, IV lo, IV hi,
                           float* out, int64_t out_step, int live, int64_t live_channels) {
  constexpr int L = Isa::L;
  IV acc[PX][VV];
#pragma GCC unroll 8
  for (int p = 0; p < PX; ++p)
#pragma GCC unroll 2
    for (int v = 0; v < VV; ++v) acc[p][v] = Isa::load(bd + v * L);
  for (int64_t a = 0; a < kh; ++a) {
    const float* row = rp[a] + x_at;
    const float* wa = wd + a * kw * wstride;
    for (int64_t b = 0; b < kw; ++b) {
      const float* base = row + b * b_step;
      const float* wt = wa + b * wstride;
#pragma GCC unroll 2
      for (int v = 0; v < VV; ++v) {
        const IV w = Isa::load(wt + v * L);
#pragma GCC unroll 8
        for (int p = 0; p < PX; ++p) acc[p][v] = Isa::fma(w, Isa::load(base + off[p] + v * L), acc[p][v]);
      }
    }
  }
#pragma GCC unroll 8
  for (int p = 0; p < PX; ++p) {
    if (p >= live) break;
#pragma GCC unroll 2
    for (int v = 0; v < VV; ++v) {
      const int64_t lanes = live_channels - v * L;
      if (lanes > 0) Isa::store_lanes(out + p * out_step + v * L, Isa::clamp(acc[p][v], lo, hi), lanes);
    }
  }
}

at::Tensor expand_depthwise_nhwc(const at::Tensor& x_in, const at::Tensor& panels, int64_t rows,
                                 const std::optional<at::Tensor>& expand_bias, double expand_min, double expand_max,
                                 const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                 c10::IntArrayRef kernel_size, c10::IntArrayRef stride, c10::IntArrayRef padding,
                                 c10::IntArrayRef dilation, double clamp_min, double clamp_max) {
  TORCH_CHECK(x_in.dim() == 4 && x_in.scalar_type() == at::kFloat, "crisp: expand_depthwise_nhwc needs a float32 [N, C, H, W] input");
  TORCH_CHECK(panels.scalar_type() == at::kFloat && panels.dim() == 3 && panels.size(2) == 16 && panels.is_contiguous() &&
                  rows >= 1 && panels.size(0) == (rows + 15) / 16,
              "crisp: panels must be a contiguous float32 [ceil(rows / 16), K, 16] tensor");
  const int64_t cin = panels.size(1);
  TORCH_CHECK(x_in.size(1) == cin, "crisp: the 1x1 expansion takes ", cin, " input channels, the input has ", x_in.size(1));
  const ConvGeometry geo(kernel_size, stride, padding, dilation);
  const int64_t kh = geo.kh, kw = geo.kw, sh = geo.sh, sw = geo.sw, ph = geo.ph, pw = geo.pw, dh = geo.dh, dw = geo.dw;
  const int64_t taps = kh * kw;
  TORCH_CHECK(weight.scalar_type() == at::kFloat && weight.dim() == 2 && weight.size(0) == taps && weight.size(1) == rows &&
                  weight.is_contiguous(),
              "crisp: depthwise weight must be a contiguous float32 [kh*kw, ", rows, "] tensor");
  const at::Tensor x = pool_contiguous(x_in, at::MemoryFormat::ChannelsLast);
  const int64_t n_s = x.size(0), h = x.size(2), w = x.size(3);
  const int64_t oh = (h + 2 * ph - dh * (kh - 1) - 1) / sh + 1, ow = (w + 2 * pw - dw * (kw - 1) - 1) / sw + 1;
  TORCH_CHECK(oh >= 1 && ow >= 1, "crisp: conv output would be empty for input ", h, "x", w);
  at::Tensor out = at::empty({n_s, rows, oh, ow}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  if (n_s == 0) return out;

  // per-channel vectors padded to whole groups of 16 (zeros past `rows`, never stored)
  const int64_t groups = (rows + 15) / 16, padded = groups * 16;
  auto padded_bias = [&](const std::optional<at::Tensor>& b, const char* what) {
    std::vector<float> v(padded, 0.f);
    if (b.has_value() && b->defined()) {
      TORCH_CHECK(b->numel() == rows, "crisp: the ", what, " bias must have ", rows, " entries");
      const at::Tensor bc = b->to(at::kFloat).contiguous();
      std::memcpy(v.data(), bc.data_ptr<float>(), sizeof(float) * rows);
    }
    return v;
  };
  const std::vector<float> ebias = padded_bias(expand_bias, "expansion"), dbias = padded_bias(bias, "depthwise");
  std::vector<float> dwt(taps * padded, 0.f);
  for (int64_t t = 0; t < taps; ++t) std::memcpy(dwt.data() + t * padded, weight.data_ptr<float>() + t * rows, sizeof(float) * rows);

  const float inf = std::numeric_limits<float>::infinity();
  const Clamp ce = make_clamp(expand_min, expand_max), cd = make_clamp(clamp_min, clamp_max);
  const IV elo = Isa::set1(ce.on ? ce.lo : -inf), ehi = Isa::set1(ce.on ? ce.hi : inf);
  const IV dlo = Isa::set1(cd.on ? cd.lo : -inf), dhi = Isa::set1(cd.on ? cd.hi : inf);

  constexpr int PP = Isa::GP, L = Isa::L, VV = kHalves;  // VV ISA vectors hold a group's 16 channels
  constexpr int PX = 8 / VV;                               // output pixels per depthwise register tile
  const int64_t span = (kh - 1) * dh + 1;                  // input rows one output row reads
  const int64_t wp = w + 2 * pw;                           // a ring row with its padding columns
  constexpr int64_t kMinParallelFmas = 24000;              // as the GEMM kernel
  const int64_t fmas = n_s * rows * (h * w * cin + oh * ow * taps);
  const int64_t threads = fmas < kMinParallelFmas ? 1 : std::max<int>(1, at::get_num_threads());
  const int64_t per_band = n_s * groups;
  int64_t bands = std::min<int64_t>(std::max<int64_t>(1, oh / 8), (6 * threads + per_band - 1) / per_band);
  bands = std::max<int64_t>(1, bands);
  const int64_t band_rows = (oh + bands - 1) / bands;
  bands = (oh + band_rows - 1) / band_rows;
  const float* xd = x.data_ptr<float>();
  const float* pd = panels.data_ptr<float>();
  float* od = out.data_ptr<float>();

  parallel_items(n_s * groups * bands, [&](int64_t item) {
    const int64_t band = item % bands, g = (item / bands) % groups, ns = item / (bands * groups);
    const int64_t y_begin = band * band_rows, y_end = std::min(oh, y_begin + band_rows);
    std::vector<float> ring((span + 1) * wp * 16, 0.f);  // span rows, then a row of zeros (rows outside the input)
    const float* zero_row = ring.data() + span * wp * 16;
    const GemmSink sink{nullptr, nullptr, ebias.data() + g * 16, 16, elo, ehi};
    const float* wv[2] = {pd + g * cin * 16, pd + g * cin * 16 + (VV > 1 ? L : 0)};
    const float* wd = dwt.data() + g * 16;
    const float* bd = dbias.data() + g * 16;
    const int64_t live_channels = std::min<int64_t>(16, rows - g * 16);
    int64_t done = std::numeric_limits<int64_t>::min();  // the last input row expanded into the ring
    // input row r expanded into its ring row: GEMM tiles of PP positions over the row's W pixels
    auto expand = [&](int64_t r, float* dst) {
      const float* xr = xd + (ns * h + r) * w * cin;
      GemmSink s = sink;
      s.out = dst + pw * 16;
      for (int64_t p0 = 0; p0 < w; p0 += PP) {
        const int live = static_cast<int>(std::min<int64_t>(PP, w - p0));
        if (live == PP) {
          gemm_tile<PP, VV, false, true>(xr + p0 * cin, cin, live, wv, s, p0, 0);
        } else {
          gemm_tile<PP, VV, false, false>(xr + p0 * cin, cin, live, wv, s, p0, 0);
        }
      }
    };
    std::vector<const float*> rp(kh);
    for (int64_t y = y_begin; y < y_end; ++y) {
      for (int64_t a = 0; a < kh; ++a) {  // increasing rows: a new row never evicts one this output row reads
        const int64_t r = y * sh - ph + a * dh;
        if (r < 0 || r >= h) {
          rp[a] = zero_row;
          continue;
        }
        // every row up to r, so that none between two dilated taps is missed; rows above this
        // output row's window are never read again, rows below it are read by later output rows
        for (int64_t q = std::max(done + 1, std::max<int64_t>(0, y * sh - ph)); q <= r; ++q)
          expand(q, ring.data() + (q % span) * wp * 16);
        done = std::max(done, r);
        rp[a] = ring.data() + (r % span) * wp * 16;
      }
      float* orow = od + (ns * oh + y) * ow * rows + g * 16;
      for (int64_t x0 = 0; x0 < ow; x0 += PX) {
        const int live = static_cast<int>(std::min<int64_t>(PX, ow - x0));
        int64_t off[PX];  // each pixel's window from the tile's first; past `live`: a repeat, never stored
        for (int p = 0; p < PX; ++p) off[p] = std::min(p, live - 1) * sw * 16;
        depthwise_tile<PX, VV>(rp.data(), kh, kw, x0 * sw * 16, dw * 16, off, wd, padded, bd, dlo, dhi,
                               orow + x0 * rows, rows, live, live_channels);
      }
    }
  }, threads);
  return out;
}
