// Fast CPU kernels of crisp's hybrid N:M + block sparse convolution and GEMM. Two kernels, both
// doing exactly one multiply-add per kept weight and output position (pruned blocks and pruned
// N:M entries never reach them), both fusing bias, a residual add and a clamp (ReLU, ReLU6), both
// sharing work items out claim by claim among the caller and helper threads (see WorkPool):
//
// 1. Rows kernel (hybrid_sparse_conv2d_fast / hybrid_sparse_linear_fast), vectorized over output
//    positions, portable (GCC vector extensions). The weight is packed row by row
//    (PackedHybridWeight): for output channel r, values vals[row_ptr[r]:row_ptr[r+1]] and the GEMM
//    columns they multiply, cols[...], in (kh, kw, cin) order. No im2col: the input is laid out
//    once per call as "phase planes" (for stride s, the sub-images x_pad[.., i*s+py, j*s+px] of
//    the zero-padded input that the taps use; for an unpadded stride-1 conv, the input as it is).
//    There the input that column (kh, kw, cin) meets at output (oh, ow) sits at
//    colofs[col] + oh*Wq + ow, so a run of T output positions of the "q grid" q = oh*Wq + ow is one
//    contiguous vector load. R output channels x T positions accumulate in registers. The last
//    tile of a sample is shifted back to end at its last position, so no read leaves the sample.
//
// 2. Channel kernel (hybrid_sparse_conv2d_nhwc), vectorized over 16 output channels, on
//    channels-last activations; needs AVX-512 and N:M groups that are runs of input channels
//    (m divides Cin). See the section below.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include "channel_isa.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

namespace crisp_cpu {
namespace {

constexpr int64_t kMinTile = 16;  // narrowest tile: a sample with fewer q positions is copied with slack

template <int L>
struct VecOf {
  typedef float type __attribute__((vector_size(L * sizeof(float))));
};

template <int L>
inline typename VecOf<L>::type loadu(const float* p) {
  typename VecOf<L>::type v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

// ---------------------------------------------------------------------------- work sharing
// A small pool that shares a job's items among the calling thread and at::get_num_threads() - 1
// helper threads, claim by claim. Unlike a fork-join region (OpenMP's barrier), the caller never
// waits for a helper that has not started: if the other core is busy with another process, the
// caller simply does every item itself and returns; it only waits for items a helper has already
// claimed. On a shared machine this keeps a late helper from stalling every layer.
inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

constexpr int64_t kBusySpinMicros = 100;  // how long an idle helper spins on its core
constexpr int64_t kSpinMicros = 400;      // how long it checks for work (yielding) before it sleeps

class WorkPool {
 public:
  static WorkPool& get() {
    static WorkPool* pool = nullptr;
    static pid_t owner = 0;
    static std::mutex create;
    std::lock_guard<std::mutex> lock(create);
    if (pool == nullptr || owner != getpid()) {  // (re)create after a fork: helpers do not survive it
      pool = new WorkPool();                     // never destroyed: helpers are detached
      owner = getpid();
    }
    return *pool;
  }

  // fn(item) for every item in [0, items), at most `threads` threads working.
  template <typename F>
  void run(int64_t items, int64_t threads, const F& fn) {
    if (items <= 0) return;
    threads = std::min<int64_t>(threads, items);
    // (work() counts claims in two 32-bit halves; no kernel makes jobs anywhere near this big.)
    if (threads <= 1 || in_job_ || items >= (int64_t{1} << 31)) {
      for (int64_t i = 0; i < items; ++i) fn(i);
      return;
    }
    const std::function<void(int64_t)> call = [&fn](int64_t i) { fn(i); };
    std::unique_lock<std::mutex> run_lock(run_mu_);  // one job at a time
    start_helpers(threads - 1);
    {
      std::lock_guard<std::mutex> lock(mu_);
      job_ = &call;
      total_ = items;
      next_.store(0, std::memory_order_relaxed);
      open_ = true;
      wanted_ = threads - 1;
      joined_ = 0;
      ++generation_;
      published_.store(generation_, std::memory_order_release);
    }
    cv_.notify_all();
    stat_jobs.fetch_add(1, std::memory_order_relaxed);
    stat_items.fetch_add(items, std::memory_order_relaxed);
    in_job_ = true;
    work(call, items, false);
    in_job_ = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      open_ = false;  // no helper joins from now on
    }
    while (active_.load(std::memory_order_acquire) != 0) std::this_thread::yield();
    job_ = nullptr;
    if (error_) {
      std::exception_ptr e = error_;
      error_ = nullptr;
      std::rethrow_exception(e);
    }
  }

 private:
  // The caller claims items from the front, helpers from the back: each thread works on one end
  // of the job (for most kernels, one range of output positions), so that a layer reads what the
  // same core wrote in the layer before. Every claim adds one to front + back, so exactly `items`
  // claims succeed, and the two ends never take the same item.
  int64_t work(const std::function<void(int64_t)>& fn, int64_t items, bool from_back) {  // returns the items it did
    constexpr uint64_t kBack = uint64_t{1} << 32;
    for (int64_t done = 0;; ++done) {
      const uint64_t old = next_.fetch_add(from_back ? kBack : 1, std::memory_order_relaxed);
      const int64_t front = static_cast<int64_t>(old & (kBack - 1)), back = static_cast<int64_t>(old >> 32);
      if (front + back >= items) return done;
      const int64_t i = from_back ? items - 1 - back : front;
      try {
        fn(i);
      } catch (...) {
        std::lock_guard<std::mutex> lock(error_mu_);
        if (!error_) error_ = std::current_exception();
        next_.store(static_cast<uint64_t>(items), std::memory_order_relaxed);  // stop handing out items
      }
    }
  }

  void start_helpers(int64_t count) {
    while (static_cast<int64_t>(helpers_) < count) {
      std::thread([this] { helper(); }).detach();
      ++helpers_;
    }
  }

  void helper() {
    in_job_ = true;  // a kernel called from inside a job runs inline
    uint64_t seen = 0;
    for (;;) {
      const std::function<void(int64_t)>* fn;
      int64_t items;
      // Spin before sleeping: layers follow each other within microseconds, and waking a
      // sleeping thread costs more than most layers take. The first kBusySpinMicros spin on the
      // core; after that the helper yields between checks, so that another thread pool (torch's,
      // for an op between two crisp layers) gets the core if it needs it.
      const auto start = std::chrono::steady_clock::now();
      const auto busy_until = start + std::chrono::microseconds(kBusySpinMicros);
      const auto spin_until = start + std::chrono::microseconds(kSpinMicros);
      bool busy = true;
      for (int i = 0; published_.load(std::memory_order_acquire) == seen; ++i) {
        if ((i & 31) == 31) {
          const auto t = std::chrono::steady_clock::now();
          if (t > spin_until) break;
          busy = t < busy_until;
        }
        if (busy) {
          cpu_relax();
        } else {
          std::this_thread::yield();
        }
      }
      fn = nullptr;
      items = 0;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return generation_ != seen; });
        seen = generation_;
        // A helper that wakes too late (the caller already did every item) does not sleep again
        // right away: it goes back to spinning, so that it is awake for the next layer. (Waiting
        // for a job that is still open instead would leave a slow-to-wake helper, as on a
        // virtual machine whose idle vCPU halts, late for every layer.)
        if (!(open_ && joined_ < wanted_)) stat_late.fetch_add(1, std::memory_order_relaxed);
        if (open_ && joined_ < wanted_) {
          stat_joins.fetch_add(1, std::memory_order_relaxed);
          ++joined_;
          active_.fetch_add(1, std::memory_order_acq_rel);
          fn = job_;
          items = total_;
        }
      }
      if (fn == nullptr) continue;
      stat_helper_items.fetch_add(work(*fn, items, true), std::memory_order_relaxed);
      active_.fetch_sub(1, std::memory_order_acq_rel);
    }
  }

  std::mutex run_mu_, mu_, error_mu_;
  std::condition_variable cv_;
  const std::function<void(int64_t)>* job_ = nullptr;
  int64_t total_ = 0, wanted_ = 0, joined_ = 0;
  size_t helpers_ = 0;
  uint64_t generation_ = 0;
  std::atomic<uint64_t> published_{0};  // generation_, readable without the lock (spinning helpers)
  bool open_ = false;
  std::atomic<uint64_t> next_{0};  // items claimed: from the front (low 32 bits) and from the back

 public:
  // How the work was shared (for diagnosis): parallel jobs, their items, items helpers did,
  // helper joins, and helper wake-ups that came after the job had closed.
  std::atomic<int64_t> stat_jobs{0}, stat_items{0}, stat_helper_items{0}, stat_joins{0}, stat_late{0};

 private:
  std::atomic<int> active_{0};
  std::exception_ptr error_;
  static thread_local bool in_job_;
};
thread_local bool WorkPool::in_job_ = false;

// fn(item) for item in [0, items) on up to at::get_num_threads() threads.
template <typename F>
void parallel_items(int64_t items, const F& fn, int64_t max_threads = std::numeric_limits<int64_t>::max()) {
  WorkPool::get().run(items, std::min<int64_t>(max_threads, std::max<int>(1, at::get_num_threads())), fn);
}

// fn(begin, end) over [0, n) in chunks of about `grain`.
template <typename F>
void parallel_range(int64_t n, int64_t grain, const F& fn) {
  grain = std::max<int64_t>(1, grain);
  const int64_t chunks = (n + grain - 1) / grain;
  parallel_items(chunks, [&](int64_t c) { fn(c * grain, std::min(n, (c + 1) * grain)); });
}

// Copy a [a_n, b_n] block of one sample, dst[a * b_n + b] = src[a * sa + b * sb], for a in [a0, a1).
// A few channels (the image an NCHW model is fed: B = 3) are a compile-time count, so that the
// loop over a is a plain vectorizable interleave; wider ones go by kT x kT tiles, so that the
// lines a strided read touches are reused kT times.
template <int B>
inline void copy_rows_small(const float* src, float* dst, int64_t a0, int64_t a1, int64_t sa, int64_t sb) {
  for (int64_t a = a0; a < a1; ++a)
#pragma GCC unroll 4
    for (int b = 0; b < B; ++b) dst[a * B + b] = src[a * sa + b * sb];
}

inline void copy_rows(const float* src, float* dst, int64_t a0, int64_t a1, int64_t b_n, int64_t sa, int64_t sb) {
  switch (b_n) {
    case 1: return copy_rows_small<1>(src, dst, a0, a1, sa, sb);
    case 2: return copy_rows_small<2>(src, dst, a0, a1, sa, sb);
    case 3: return copy_rows_small<3>(src, dst, a0, a1, sa, sb);
    case 4: return copy_rows_small<4>(src, dst, a0, a1, sa, sb);
    default: break;
  }
  constexpr int64_t kT = 16;
  for (int64_t t0 = a0; t0 < a1; t0 += kT) {
    const int64_t t1 = std::min(a1, t0 + kT);
    for (int64_t b0 = 0; b0 < b_n; b0 += kT) {
      const int64_t b1 = std::min(b_n, b0 + kT);
      for (int64_t a = t0; a < t1; ++a)
        for (int64_t b = b0; b < b1; ++b) dst[a * b_n + b] = src[a * sa + b * sb];
    }
  }
}

// x laid out contiguously in `format`, copied by crisp's own pool when it is not already. A layout
// change left to torch runs on torch's OpenMP pool, whose worker then spins for milliseconds
// (libgomp's default wait policy) on the core that crisp's helper needs for the next layers: two
// such copies in ResNet-50 (rows-kernel layers between channels-last ones) made the model 1.45x
// slower at 2 threads (31 vs 21 ms per run, 2-vCPU AMD EPYC). Float 4-D tensors whose spatial
// dims merge are copied here (every layout the kernels meet); anything else goes to torch.
at::Tensor pool_contiguous(const at::Tensor& x, at::MemoryFormat format) {
  if (x.is_contiguous(format)) return x;
  const bool four_d = x.dim() == 4 && x.scalar_type() == at::kFloat;
  const int64_t h = four_d ? x.size(2) : 0, w = four_d ? x.size(3) : 0;
  if (!four_d || !(h == 1 || w == 1 || x.stride(2) == w * x.stride(3))) return x.contiguous(format);
  at::Tensor out = at::empty(x.sizes(), x.options().memory_format(format));
  if (out.numel() == 0) return out;
  // out is [n][a][b] contiguous; x's element (sample, a, b) sits at sample*s0 + a*sa + b*sb
  const int64_t n = x.size(0), c = x.size(1), hw = h * w;
  const int64_t s0 = x.stride(0), sc = x.stride(1), sp = w == 1 ? x.stride(2) : x.stride(3);
  const bool cl = format == at::MemoryFormat::ChannelsLast;
  const int64_t a_n = cl ? hw : c, b_n = cl ? c : hw, sa = cl ? sp : sc, sb = cl ? sc : sp;
  // Work items of at least kMinItem floats, a multiple of 16 rows of a each: one claim per 48
  // floats (16 pixels of a 3-channel image) made the copy of a 224 x 224 input 7x slower than this.
  constexpr int64_t kMinItem = 1 << 14;
  const int64_t rows_per_item = std::max<int64_t>(16, (kMinItem / std::max<int64_t>(1, b_n) + 15) / 16 * 16);
  const int64_t a_items = (a_n + rows_per_item - 1) / rows_per_item;
  const float* xd = x.data_ptr<float>();
  float* od = out.data_ptr<float>();
  parallel_items(n * a_items, [&](int64_t item) {
    const int64_t ni = item / a_items, a0 = (item % a_items) * rows_per_item, a1 = std::min(a_n, a0 + rows_per_item);
    copy_rows(xd + ni * s0, od + ni * a_n * b_n, a0, a1, b_n, sa, sb);
  });
  return out;
}

// Zeros that the taps in a conv's zero padding read: a shared, never written run of floats for up
// to kSharedZeros channels (a zeroed tensor per call cost ~5 us, 2 % of MobileNetV2's run), else
// a tensor of its own.
constexpr int64_t kSharedZeros = 1 << 16;
alignas(64) float shared_zeros[kSharedZeros];  // zero-initialized, never written

struct Zeros {
  at::Tensor owned;  // only for more than kSharedZeros floats
  const float* data;
  Zeros(int64_t n, const at::TensorOptions& options)
      : owned(n > kSharedZeros ? at::zeros({n}, options) : at::Tensor()),
        data(n > kSharedZeros ? owned.data_ptr<float>() : shared_zeros) {}
};

// The fused activation: y = min(max(y, lo), hi) (ReLU: [0, inf), ReLU6: [0, 6]); NaN stays NaN.
struct Clamp {
  bool on = false;
  float lo = 0.f, hi = 0.f;
  inline float operator()(float y) const { return on ? (y < lo ? lo : (y > hi ? hi : y)) : y; }
  template <int L>
  inline typename VecOf<L>::type apply(typename VecOf<L>::type v) const {
    const typename VecOf<L>::type zero = {};
    const typename VecOf<L>::type lv = zero + lo, hv = zero + hi;
    v = v < lv ? lv : v;
    return v > hv ? hv : v;
  }
};

Clamp make_clamp(double lo, double hi) {
  TORCH_CHECK(!(lo > hi), "crisp: clamp_min must not exceed clamp_max");
  Clamp c;
  c.on = lo > -std::numeric_limits<double>::infinity() || hi < std::numeric_limits<double>::infinity();
  c.lo = static_cast<float>(lo);
  c.hi = static_cast<float>(hi);
  return c;
}

// Where the operand of every GEMM column lives, and how output positions map to the q grid.
struct Source {
  const float* data = nullptr;     // start of sample 0
  int64_t sample_stride = 0;       // floats between samples
  int64_t samples = 0;
  bool slack = false;              // every sample may be read kMinTile floats past its last q
  int64_t wq = 0;                  // q-grid row width
  int64_t oh = 0, ow = 0;          // valid output rows / columns
  std::vector<int64_t> colofs;     // per GEMM column: offset of its operand at q = 0
  const float* sample(int64_t n) const { return data + n * sample_stride; }
  int64_t q_count() const { return (oh - 1) * wq + ow; }
};

// Where outputs go: out[n*out_n + r*out_r + (oh*ow_count + ow)*out_p].
struct Sink {
  float* out = nullptr;
  int64_t out_n = 0, out_r = 0, out_p = 1;
  const float* residual = nullptr;  // same layout as out, or null
  const float* bias = nullptr;      // [rows] or null
  Clamp clamp;
};

struct Weights {
  const int64_t* row_ptr;
  const int32_t* cols;
  const float* vals;
  int64_t rows;
};

// R output rows x NV vectors of L lanes = a register tile of R x (L*NV) outputs.
template <int L, int NV, int R>
struct Tile {
  using V = typename VecOf<L>::type;
  static constexpr int64_t T = int64_t(L) * NV;

  // acc[r] += sum_v vals[v] * x[off[v] + 0..T) over the kept values of R rows
  static inline void accumulate(const float* x, const int32_t* off, const float* vals, const int64_t* start,
                                const int64_t* len, V (&acc)[R][NV]) {
    int64_t common = len[0];
#pragma GCC unroll 8
    for (int r = 1; r < R; ++r) common = std::min(common, len[r]);
    for (int64_t v = 0; v < common; ++v) {
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        const float* p = x + off[start[r] + v];
        const float w = vals[start[r] + v];
#pragma GCC unroll 16
        for (int i = 0; i < NV; ++i) acc[r][i] += w * loadu<L>(p + i * L);
      }
    }
#pragma GCC unroll 1
    for (int r = 0; r < R; ++r) {
      for (int64_t v = common; v < len[r]; ++v) {
        const float* p = x + off[start[r] + v];
        const float w = vals[start[r] + v];
#pragma GCC unroll 16
        for (int i = 0; i < NV; ++i) acc[r][i] += w * loadu<L>(p + i * L);
      }
    }
  }

  // Store the valid positions of one row of the tile: bias, residual, ReLU fused.
  // Positions [from, q0 + T) of the tile starting at q0 are new (a shifted last tile overlaps
  // the previous one, whose outputs are already stored).
  static inline void store(const Source& src, const Sink& sink, int64_t n, int64_t r, int64_t q0, int64_t from,
                           V (&acc)[NV]) {
    const float b = sink.bias ? sink.bias[r] : 0.f;
#pragma GCC unroll 16
    for (int i = 0; i < NV; ++i) acc[i] += b;
    const int64_t q_count = src.q_count();
    float* out = sink.out + n * sink.out_n + r * sink.out_r;
    const float* res = sink.residual ? sink.residual + n * sink.out_n + r * sink.out_r : nullptr;
    if (src.wq == src.ow && sink.out_p == 1 && from == q0 && q0 + T <= q_count) {
      // T consecutive outputs: store straight from the registers
#pragma GCC unroll 16
      for (int i = 0; i < NV; ++i) {
        V y = acc[i];
        if (res) y += loadu<L>(res + q0 + i * L);
        if (sink.clamp.on) y = sink.clamp.template apply<L>(y);
        std::memcpy(out + q0 + i * L, &y, sizeof(V));
      }
      return;
    }
    if (sink.clamp.on && !res)
      for (int i = 0; i < NV; ++i) acc[i] = sink.clamp.template apply<L>(acc[i]);
    alignas(64) float tmp[T];
    std::memcpy(tmp, acc, sizeof(tmp));
    const int64_t q_end = std::min(q0 + T, q_count);
    int64_t q = from;
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
        if (sink.clamp.on) {
          for (int64_t u = 0; u < valid; ++u) o[u] = sink.clamp(t[u] + rr[u]);
        } else {
          for (int64_t u = 0; u < valid; ++u) o[u] = t[u] + rr[u];
        }
      } else {
        for (int64_t u = 0; u < valid; ++u) {
          float y = t[u];
          if (res) y += res[(p0 + u) * sink.out_p];
          y = sink.clamp(y);
          out[(p0 + u) * sink.out_p] = y;
        }
      }
      q += seg;
    }
  }

  static void run(const Source& src, const Weights& w, const Sink& sink, const int32_t* off) {
    const int64_t q_count = src.q_count();
    TORCH_CHECK(src.slack || q_count >= T, "crisp: internal error: tile wider than the sample");
    const int64_t tiles = (q_count + T - 1) / T;
    const int64_t base_items = src.samples * tiles;
    if (base_items == 0 || w.rows == 0) return;
    const int64_t threads = std::max<int>(1, at::get_num_threads());
    // split output channels too when there are few tiles (small images, batch 1)
    int64_t chunks = std::max<int64_t>(1, (4 * threads + base_items - 1) / base_items);
    chunks = std::min(chunks, std::max<int64_t>(1, w.rows / 16));
    int64_t chunk_rows = (w.rows + chunks - 1) / chunks;
    chunk_rows = (chunk_rows + R - 1) / R * R;
    chunks = (w.rows + chunk_rows - 1) / chunk_rows;
    const int64_t items = base_items * chunks;
    parallel_items(items, [&](int64_t item) {
      const int64_t chunk = item % chunks;
      const int64_t tile = (item / chunks) % tiles;
      const int64_t n = item / (chunks * tiles);
      const int64_t from = tile * T;
      const int64_t q0 = src.slack ? from : std::min(from, q_count - T);
      const float* x = src.sample(n) + q0;
      const int64_t r_begin = chunk * chunk_rows, r_end = std::min(w.rows, r_begin + chunk_rows);
      int64_t r = r_begin;
      for (; r + R <= r_end; r += R) {
        V acc[R][NV] = {};
        int64_t start[R], len[R];
        for (int j = 0; j < R; ++j) {
          start[j] = w.row_ptr[r + j];
          len[j] = w.row_ptr[r + j + 1] - start[j];
        }
        accumulate(x, off, w.vals, start, len, acc);
        for (int j = 0; j < R; ++j) store(src, sink, n, r + j, q0, from, acc[j]);
      }
      for (; r < r_end; ++r) {
        V acc[1][NV] = {};
        int64_t start[1] = {w.row_ptr[r]}, len[1] = {w.row_ptr[r + 1] - w.row_ptr[r]};
        Tile<L, NV, 1>::accumulate(x, off, w.vals, start, len, acc);
        Tile<L, NV, 1>::store(src, sink, n, r, q0, from, acc[0]);
      }
    });
  }
};

// Resolve every kept value's operand offset once per call, then run the register tiles.
void run_tiles(const Source& src, const Weights& w, const Sink& sink) {
  const int64_t nnz = w.row_ptr[w.rows];
  std::vector<int32_t> off(nnz);
  const int64_t* colofs = src.colofs.data();
  parallel_range(nnz, 1 << 15, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) off[i] = static_cast<int32_t>(colofs[w.cols[i]]);
  });
  const int64_t q = src.slack ? std::max<int64_t>(src.q_count(), kMinTile) : src.q_count();
  const int32_t* o = off.data();
  TORCH_CHECK(q >= kMinTile, "crisp: internal error: too few positions for a tile");
  if constexpr (Isa::L >= 16) {  // 32 vector registers: up to 16 accumulators
    if (q >= 64) return Tile<16, 4, 4>::run(src, w, sink, o);
    if (q >= 32) return Tile<16, 2, 4>::run(src, w, sink, o);
    return Tile<16, 1, 4>::run(src, w, sink, o);
  } else {  // 8 lanes in 16 registers: at most 12 accumulators, or the tile spills to the stack
    if (q >= 32) return Tile<8, 4, 3>::run(src, w, sink, o);
    return Tile<8, 2, 4>::run(src, w, sink, o);
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

// The bias (float32, one per output channel) and residual (float32, the output's shape and
// layout) a fused epilogue reads, checked; they stay alive as long as this object.
struct Epilogue {
  at::Tensor bias, residual;
  Epilogue(const std::optional<at::Tensor>& b, const std::optional<at::Tensor>& r, int64_t rows, const at::Tensor& out) {
    if (b.has_value() && b->defined()) {
      TORCH_CHECK(b->numel() == rows, "crisp: bias must have ", rows, " entries");
      bias = b->to(at::kFloat).contiguous();
    }
    if (r.has_value() && r->defined()) {
      TORCH_CHECK(r->sizes() == out.sizes(), "crisp: residual must have the output's shape ", out.sizes());
      residual = pool_contiguous(r->to(at::kFloat), out.suggest_memory_format());
    }
  }
  const float* bias_ptr() const { return bias.defined() ? bias.data_ptr<float>() : nullptr; }
  const float* residual_ptr() const { return residual.defined() ? residual.data_ptr<float>() : nullptr; }
};

// A conv's kernel size, stride, padding and dilation, each given as 1 or 2 numbers, checked.
struct ConvGeometry {
  int64_t kh, kw, sh, sw, ph, pw, dh, dw;
  ConvGeometry(c10::IntArrayRef kernel_size, c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef dilation)
      : kh(pair_arg(kernel_size, 0, "kernel_size")), kw(pair_arg(kernel_size, 1, "kernel_size")),
        sh(pair_arg(stride, 0, "stride")), sw(pair_arg(stride, 1, "stride")),
        ph(pair_arg(padding, 0, "padding")), pw(pair_arg(padding, 1, "padding")),
        dh(pair_arg(dilation, 0, "dilation")), dw(pair_arg(dilation, 1, "dilation")) {
    TORCH_CHECK(sh >= 1 && sw >= 1 && dh >= 1 && dw >= 1 && ph >= 0 && pw >= 0 && kh >= 1 && kw >= 1,
                "crisp: invalid conv geometry");
  }
};

// dst[i, j] = x_pad[i*sh + py, j*sw + px] for i < hq, j < wq, where x_pad is x zero-padded by (ph, pw).
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
                       c10::IntArrayRef dilation, double clamp_min, double clamp_max, bool channels_last) {
  TORCH_CHECK(x_in.dim() == 4, "crisp: conv input must be [N, C, H, W], got ", x_in.dim(), " dims");
  TORCH_CHECK(x_in.scalar_type() == at::kFloat, "crisp: the cpu kernels run float32, got ", x_in.scalar_type());
  const at::Tensor x = pool_contiguous(x_in, at::MemoryFormat::Contiguous);
  const int64_t n_s = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
  const ConvGeometry geo(kernel_size, stride, padding, dilation);
  const int64_t kh = geo.kh, kw = geo.kw, sh = geo.sh, sw = geo.sw, ph = geo.ph, pw = geo.pw, dh = geo.dh, dw = geo.dw;
  const int64_t k = kh * kw * c;
  TORCH_CHECK(k == in_features, "crisp: the packed weight has ", in_features, " input features but a ", kh, "x", kw,
              " conv over ", c, " channels has ", k);
  check_weights(row_ptr, cols, vals);
  const int64_t rows = row_ptr.numel() - 1;
  const int64_t oh = (h + 2 * ph - dh * (kh - 1) - 1) / sh + 1;
  const int64_t ow = (w + 2 * pw - dw * (kw - 1) - 1) / sw + 1;
  TORCH_CHECK(oh >= 1 && ow >= 1, "crisp: conv output would be empty for input ", h, "x", w);
  at::Tensor out = at::empty({n_s, rows, oh, ow},
                             x.options().memory_format(channels_last ? at::MemoryFormat::ChannelsLast
                                                                     : at::MemoryFormat::Contiguous));
  if (n_s == 0 || rows == 0) return out;

  // Operand layout. Every kept column (kh, kw, cin) needs, for each output position q of the q
  // grid, x_pad[cin, oh*sh + kh*dh, ow*sw + kw*dw]; we lay out planes so that this is
  // plane[colofs + q], making a tile of q positions one contiguous load.
  //  - direct (stride 1, no padding): the planes are x's channels as they are, Wq = W;
  //  - phases (otherwise): one plane per phase (py, px) of the zero-padded input sampled at stride
  //    (sh, sw), Wq = ceil((W + 2pw) / sw); tap (kh, kw) reads phase ((kh*dh) % sh, (kw*dw) % sw)
  //    shifted by ((kh*dh) / sh) rows and ((kw*dw) / sw) columns. This costs one copy of the input
  //    and keeps the operands of all taps overlapping in cache (an im2col would not).
  // Planes no kept column reads are not filled.
  const int64_t k_taps = kh * kw;
  const bool direct = sh == 1 && sw == 1 && ph == 0 && pw == 0 && (oh - 1) * w + ow >= kMinTile;
  std::vector<int64_t> plane_of_tap(k_taps), shift_of_tap(k_taps);
  std::vector<std::pair<int64_t, int64_t>> plane_origin;  // phase (py, px) of each plane
  const int64_t hq = direct ? h : (h + 2 * ph + sh - 1) / sh;
  const int64_t wq = direct ? w : (w + 2 * pw + sw - 1) / sw;
  {
    std::vector<int64_t> index(sh * sw, -1);
    for (int64_t a = 0; a < kh; ++a)
      for (int64_t b = 0; b < kw; ++b) {
        const int64_t py = (a * dh) % sh, px = (b * dw) % sw;
        int64_t& idx = index[py * sw + px];
        if (idx < 0) {
          idx = static_cast<int64_t>(plane_origin.size());
          plane_origin.push_back({py, px});
        }
        plane_of_tap[a * kw + b] = idx;
        shift_of_tap[a * kw + b] = ((a * dh) / sh) * wq + (b * dw) / sw;
      }
  }
  const int64_t planes = static_cast<int64_t>(plane_origin.size());
  const int64_t q_count = (oh - 1) * wq + ow;
  // a sample with fewer q positions than the narrowest tile gets kMinTile floats of slack per plane
  const int64_t plane = hq * wq + (q_count < kMinTile ? kMinTile : 0);
  const int64_t sample_size = planes * c * plane;
  TORCH_CHECK(sample_size < (int64_t(1) << 31), "crisp: one sample's input is too large for the cpu kernel (",
              sample_size, " floats); use target='reference'");

  Source src;
  src.samples = n_s;
  src.wq = wq;
  src.oh = oh;
  src.ow = ow;
  src.sample_stride = sample_size;
  src.slack = q_count < kMinTile;
  src.colofs.resize(k);
  for (int64_t t = 0; t < k_taps; ++t)
    for (int64_t ci = 0; ci < c; ++ci) src.colofs[t * c + ci] = (plane_of_tap[t] * c + ci) * plane + shift_of_tap[t];

  at::Tensor buffer;
  const float* xd = x.data_ptr<float>();
  if (direct) {
    src.data = xd;
  } else {
    std::vector<uint8_t> used(k, 0), needed(planes * c, 0);
    const int32_t* cl = cols.data_ptr<int32_t>();
    for (int64_t i = 0, e = cols.numel(); i < e; ++i) used[cl[i]] = 1;
    for (int64_t t = 0; t < k_taps; ++t)
      for (int64_t ci = 0; ci < c; ++ci) needed[plane_of_tap[t] * c + ci] |= used[t * c + ci];
    buffer = at::empty({n_s * sample_size}, x.options());
    float* bd = buffer.data_ptr<float>();
    const int64_t jobs = n_s * planes * c;
    parallel_range(jobs, std::max<int64_t>(1, 16384 / std::max<int64_t>(1, plane)), [&](int64_t b0, int64_t b1) {
      for (int64_t i = b0; i < b1; ++i) {
        const int64_t pc = i % (planes * c), ni = i / (planes * c);
        if (!needed[pc]) continue;
        const int64_t pl = pc / c, ci = pc % c;
        float* dst = bd + ni * sample_size + pc * plane;
        fill_plane(xd + (ni * c + ci) * h * w, h, w, plane_origin[pl].first, plane_origin[pl].second, sh, sw, ph, pw,
                   dst, hq, wq);
        if (plane > hq * wq) std::memset(dst + hq * wq, 0, sizeof(float) * (plane - hq * wq));
      }
    });
    src.data = bd;
  }

  Sink sink;
  sink.out = out.data_ptr<float>();
  sink.out_n = rows * oh * ow;
  sink.out_r = channels_last ? 1 : oh * ow;
  sink.out_p = channels_last ? rows : 1;
  sink.clamp = make_clamp(clamp_min, clamp_max);
  const Epilogue epilogue(bias, residual, rows, out);
  sink.bias = epilogue.bias_ptr();
  sink.residual = epilogue.residual_ptr();
  Weights wts{row_ptr.data_ptr<int64_t>(), cols.data_ptr<int32_t>(), vals.data_ptr<float>(), rows};
  run_tiles(src, wts, sink);
  return out;
}

// Few rows of input (e.g. a classifier at batch 1): one dot product per output, rows in parallel.
void linear_dots(const float* x, int64_t m, int64_t k, const Weights& w, const float* bias, const Clamp& clamp,
                 float* out) {
  parallel_range(w.rows, 64, [&](int64_t r0, int64_t r1) {
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
        y = clamp(y);
        out[i * w.rows + r] = y;
      }
    }
  });
}

at::Tensor linear_fast(const at::Tensor& x_in, const at::Tensor& row_ptr, const at::Tensor& cols, const at::Tensor& vals,
                       int64_t in_features, const std::optional<at::Tensor>& bias, double clamp_min,
                       double clamp_max) {
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
    if (m < 16) {
      linear_dots(x.data_ptr<float>(), m, k, wts, bp, make_clamp(clamp_min, clamp_max), out.data_ptr<float>());
    } else {
      // many rows: transpose to [K, M] and run the tile kernel over M positions
      TORCH_CHECK(k * m < (int64_t(1) << 31), "crisp: linear input too large for the cpu kernel");
      at::Tensor xt = at::empty({k * m}, x.options());
      float* xtd = xt.data_ptr<float>();
      const float* xd = x.data_ptr<float>();
      parallel_range(k, 64, [&](int64_t c0, int64_t c1) {
        for (int64_t ci = c0; ci < c1; ++ci)
          for (int64_t i = 0; i < m; ++i) xtd[ci * m + i] = xd[i * k + ci];
      });
      Source src;
      src.data = xtd;
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
      sink.clamp = make_clamp(clamp_min, clamp_max);
      run_tiles(src, wts, sink);
    }
  }
  return out.reshape(out_shape);
}

// ============================================================================ channel-vector kernel
// Vectorized over 16 output channels instead of output positions, on channels-last (NHWC)
// activations. In GEMM column order (kh, kw, cin) the m columns of an N:M group are m
// consecutive input channels of one pixel, so for each output position the kernel loads the
// group's m inputs once into a register and lets every lane (output channel) pick its n kept
// inputs with a register permute (see channel_isa.h; m <= the ISA's lanes): one FMA per kept
// weight, no wasted lane, no gather. The weight is packed per 16-channel row vector and group:
// vals[rv, g, j, lane], idx[rv, g, j, lane] (uint8 position in the group), and per block-row
// and group its tap and first input channel (gtap, gcin). An ISA of L < 16 lanes runs each row
// vector as 16 / L halves of the same packing.
// Loop order (measured on Zen 4): a work item is a span of output positions x a run of row
// vectors; for each tile of P positions it looks up where every tap of every position reads
// (the input itself, or zeros in the padding: no padded copy), then runs all its row vectors on
// that tile, RV at a time when they share a block-row, so one group load feeds RV x n FMAs.
constexpr bool kHaveChannelKernel = true;

struct ChanWeights {
  const float* vals;
  const uint8_t* idx;
  const int32_t* gtap;
  const int32_t* gcin;
  int64_t rvs_per_br, groups, n, rows, rvs;
};

// Where the input of every (position, tap) lives: the pixel's first channel inside the NHWC
// input, or a buffer of zeros for taps that fall in the zero padding. No padded copy of the
// input is made; a tile of P positions looks its pointers up once and shares them among all
// the row vectors it computes.
struct ChanSource {
  const float* data;
  const float* zeros;  // at least c + 16 zero floats
  int64_t sample_stride, c, h, w, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow;
  std::vector<int32_t> used_taps;  // the taps some kept group reads; the others are never looked up
  int64_t taps() const { return kh * kw; }

  // table[t * P + q] = where tap t of output position p0 + q reads (q < live), for the used taps.
  template <int P>
  void tap_pointers(const float* x, int64_t p0, int live, const float** table) const {
    int64_t y = p0 / ow, xo = p0 % ow;
    for (int q = 0; q < live; ++q) {
      const int64_t iy0 = y * sh - ph, ix0 = xo * sw - pw;
      const float* origin = x + (iy0 * w + ix0) * c;
      const bool inside = iy0 >= 0 && ix0 >= 0 && iy0 + (kh - 1) * dh < h && ix0 + (kw - 1) * dw < w;
      for (const int32_t t : used_taps) {
        const int64_t a = t / kw, b = t % kw;
        const int64_t iy = iy0 + a * dh, ix = ix0 + b * dw;
        table[t * P + q] = inside || (iy >= 0 && iy < h && ix >= 0 && ix < w) ? origin + (a * dh * w + b * dw) * c : zeros;
      }
      if (++xo == ow) {
        xo = 0;
        ++y;
      }
    }
    for (int q = live; q < P; ++q)  // lanes past the last position read zeros and are never stored
      for (const int32_t t : used_taps) table[t * P + q] = zeros;
  }
};

struct ChanSink {
  float* out;
  const float* residual;
  const float* bias;
  int64_t rows;
  Clamp clamp;
};

using IV = Isa::V;
constexpr int H = kHalves;
constexpr int HS = Isa::HS;  // halves of a row vector per register tile (H / HS tiles cover it)
static_assert(H % HS == 0, "a tile covers whole halves");

// acc[u][h][q] (lanes (h0 + h)*L.. of row vector rv + u at position q) = the kept weights times
// inputs, for RV row vectors of one block-row (they share its groups, so each group's inputs are
// loaded once for all of them) and HS of their H halves (with 8 lanes, one half per tile leaves
// registers for P = 8 positions: 8 accumulators, 2n weights and indices, the group load).
// REG: the tile's positions read at a fixed step from the first one (step floats) for every tap, so
// one pointer per group replaces the P pointer loads (each a load the group's inputs wait on).
template <int P, int NN, bool WIDE, int RV, bool DENSE = false, bool REG = false>
inline void chan_tile(const float* const* table, int64_t step, const ChanWeights& w, int64_t rv, int h0, Isa::G live,
                      IV (&acc_out)[RV][HS][P]) {
  // Accumulate in a local array, stored to acc_out at the end: the vector types may alias float,
  // so through the reference every input load would force the accumulators out to memory
  // (measured: 5x slower on AVX2).
  IV acc[RV][HS][P];
#pragma GCC unroll 4
  for (int u = 0; u < RV; ++u)
    for (int hh = 0; hh < HS; ++hh)
#pragma GCC unroll 16
      for (int q = 0; q < P; ++q) acc[u][hh][q] = Isa::zero();
  const int64_t br = rv / w.rvs_per_br;
  const int64_t n = NN > 0 ? NN : w.n;
  const int64_t rv_stride = w.groups * n * 16;
  const float* vals = w.vals + rv * rv_stride;
  const uint8_t* idx = w.idx + rv * rv_stride;
  const int32_t* gtap = w.gtap + br * w.groups;
  const int32_t* gcin = w.gcin + br * w.groups;
  for (int64_t g = 0; g < w.groups; ++g) {
    const float* const* ptr = table + gtap[g] * P;
    const int64_t cin = gcin[g];
    const float* first = ptr[0] + cin;
    auto at = [&](int q) -> const float* { return REG ? first + q * step : ptr[q] + cin; };
    if constexpr (DENSE) {  // every weight of the group kept (n == m): entry j multiplies input j
      IV v[RV][HS][NN];
#pragma GCC unroll 4
      for (int u = 0; u < RV; ++u)
        for (int hh = 0; hh < HS; ++hh)
#pragma GCC unroll 4
          for (int j = 0; j < NN; ++j) v[u][hh][j] = Isa::load(vals + u * rv_stride + (g * NN + j) * 16 + (h0 + hh) * Isa::L);
#pragma GCC unroll 16
      for (int q = 0; q < P; ++q) {
#pragma GCC unroll 4
        for (int j = 0; j < NN; ++j) {
          const IV xj = Isa::set1(at(q)[j]);
#pragma GCC unroll 4
          for (int u = 0; u < RV; ++u)
            for (int hh = 0; hh < HS; ++hh) acc[u][hh][q] = Isa::fma(v[u][hh][j], xj, acc[u][hh][q]);
        }
      }
    } else if constexpr (NN > 0) {
      IV v[RV][HS][NN];
      Isa::I ix[RV][HS][NN];
#pragma GCC unroll 4
      for (int u = 0; u < RV; ++u)
        for (int hh = 0; hh < HS; ++hh)
#pragma GCC unroll 4
          for (int j = 0; j < NN; ++j) {
            const int64_t o = u * rv_stride + (g * NN + j) * 16 + (h0 + hh) * Isa::L;
            v[u][hh][j] = Isa::load(vals + o);
            ix[u][hh][j] = Isa::load_idx(idx + o);
          }
#pragma GCC unroll 16
      for (int q = 0; q < P; ++q) {
        const IV xg = Isa::load_group<WIDE>(at(q), live);
#pragma GCC unroll 4
        for (int u = 0; u < RV; ++u)
          for (int hh = 0; hh < HS; ++hh)
#pragma GCC unroll 4
            for (int j = 0; j < NN; ++j)
              acc[u][hh][q] = Isa::fma(v[u][hh][j], Isa::template pick_group<WIDE>(xg, ix[u][hh][j]), acc[u][hh][q]);
      }
    } else {
      for (int q = 0; q < P; ++q) {
        const IV xg = Isa::load_group<WIDE>(at(q), live);
        for (int u = 0; u < RV; ++u)
          for (int hh = 0; hh < HS; ++hh)
            for (int64_t j = 0; j < n; ++j) {
              const int64_t o = u * rv_stride + (g * n + j) * 16 + (h0 + hh) * Isa::L;
              acc[u][hh][q] = Isa::fma(Isa::load(vals + o), Isa::pick(xg, Isa::load_idx(idx + o)), acc[u][hh][q]);
            }
      }
    }
  }
#pragma GCC unroll 4
  for (int u = 0; u < RV; ++u)
    for (int hh = 0; hh < HS; ++hh)
#pragma GCC unroll 16
      for (int q = 0; q < P; ++q) acc_out[u][hh][q] = acc[u][hh][q];
}

// Bias, residual, clamp, then store 16 (or fewer, for the last row vector) channels of `live`
// consecutive positions starting at p0.
template <int P>
inline void chan_store(const ChanSink& sink, int64_t sample_out, int64_t p0, int live, int64_t rv, int h0,
                       IV (&acc)[HS][P]) {
  const IV lo = Isa::set1(sink.clamp.lo), hi = Isa::set1(sink.clamp.hi);
  for (int hh = 0; hh < HS; ++hh) {
    const int64_t r0 = rv * 16 + (h0 + hh) * Isa::L;
    if (r0 >= sink.rows) return;
    const int64_t lanes = std::min<int64_t>(Isa::L, sink.rows - r0);
    const IV b = sink.bias ? Isa::load_lanes(sink.bias + r0, lanes) : Isa::zero();
    for (int q = 0; q < live; ++q) {
      const int64_t o = sample_out + (p0 + q) * sink.rows + r0;
      IV y = Isa::add(acc[hh][q], b);
      if (sink.residual) y = Isa::add(y, Isa::load_lanes(sink.residual + o, lanes));
      if (sink.clamp.on) y = Isa::clamp(y, lo, hi);
      Isa::store_lanes(sink.out + o, y, lanes);
    }
  }
}

// The step (in floats, > 0) at which every used tap's P positions read, or 0 if they do not (a
// tile across an output row, or touching the padding).
template <int P>
inline int64_t regular_step(const ChanSource& src, const float* const* table) {
  const int32_t t0 = src.used_taps.empty() ? 0 : src.used_taps[0];
  const int64_t step = table[t0 * P + 1] - table[t0 * P];
  if (step <= 0) return 0;
  for (const int32_t t : src.used_taps)
    for (int q = 1; q < P; ++q)
      if (table[t * P + q] != table[t * P] + q * step) return 0;
  return step;
}

template <int NN, bool WIDE, int RV, bool DENSE = false>
void chan_run(const ChanSource& src, const ChanWeights& w, const ChanSink& sink, int64_t samples, int64_t m) {
  constexpr int P = Isa::P;
  constexpr int64_t kMaxSpan = 64;  // positions per work item, at most
  constexpr int64_t kFac = 4;       // aim for at least kFac work items per thread
  // below this many FMAs a second thread costs more (waking, a second look-up table) than it saves
  constexpr int64_t kMinParallelFmas = 24000;
  const int64_t q_count = src.oh * src.ow;
  const int64_t units = w.rvs / RV;  // runs of RV row vectors (RV divides rvs_per_br)
  const int64_t fmas = samples * q_count * w.rvs * w.groups * w.n;
  const int64_t threads = fmas < kMinParallelFmas ? 1 : std::max<int>(1, at::get_num_threads());
  // split positions first (each item builds its own tap look-up table), row vectors only when
  // positions alone give too few items
  int64_t span = (samples * q_count + kFac * threads - 1) / (kFac * threads);
  span = std::min<int64_t>(kMaxSpan / P * P, std::max<int64_t>(P, (span + P - 1) / P * P));
  const int64_t spans = (q_count + span - 1) / span;
  const int64_t base_items = samples * spans;
  int64_t chunks = threads == 1 ? 1 : std::max<int64_t>(1, (kFac * threads + base_items - 1) / base_items);
  chunks = std::min(chunks, units);
  const int64_t chunk_units = (units + chunks - 1) / chunks;
  chunks = (units + chunk_units - 1) / chunk_units;
  const int64_t items = base_items * chunks;
  const int64_t taps = src.taps();
  const Isa::G live_lanes = Isa::group_mask(m);
  parallel_items(items, [&](int64_t item) {
    std::vector<const float*> table_store(taps * P);
    const float** table = table_store.data();
    const int64_t chunk = item % chunks, sp = (item / chunks) % spans, ns = item / (chunks * spans);
    const float* x = src.data + ns * src.sample_stride;
    const int64_t sample_out = ns * q_count * sink.rows;
    const int64_t q_begin = sp * span, q_end = std::min(q_count, q_begin + span);
    const int64_t u_begin = chunk * chunk_units, u_end = std::min(units, u_begin + chunk_units);
    for (int64_t p0 = q_begin; p0 < q_end; p0 += P) {
      const int live = static_cast<int>(std::min<int64_t>(P, q_end - p0));
      src.tap_pointers<P>(x, p0, live, table);
      const int64_t step = live == P ? regular_step<P>(src, table) : 0;
      for (int64_t u = u_begin; u < u_end; ++u) {
        const int64_t rv = u * RV;
        for (int h0 = 0; h0 < H; h0 += HS) {
          if (rv * 16 + h0 * Isa::L >= sink.rows) break;  // the last row vector's lanes past the rows
          IV acc[RV][HS][P];  // chan_tile sets every entry
          if (step > 0) {
            chan_tile<P, NN, WIDE, RV, DENSE, true>(table, step, w, rv, h0, live_lanes, acc);
          } else {
            chan_tile<P, NN, WIDE, RV, DENSE, false>(table, 0, w, rv, h0, live_lanes, acc);
          }
          for (int i = 0; i < RV; ++i) chan_store<P>(sink, sample_out, p0, live, rv + i, h0, acc[i]);
        }
      }
    }
  }, threads);
}


// ============================================================================ pooling (channels-last)
// The pools that sit between crisp's convs, run on the same threads as the convs (torch's own
// pools would wake a second thread pool between two layers). Channels are the inner loop, so the
// compiler vectorizes them; NaN propagates like torch's max_pool2d.
at::Tensor max_pool2d_nhwc(const at::Tensor& x_in, c10::IntArrayRef kernel_size, c10::IntArrayRef stride,
                           c10::IntArrayRef padding) {
  TORCH_CHECK(x_in.dim() == 4 && x_in.scalar_type() == at::kFloat, "crisp: max_pool2d_nhwc needs a float32 [N, C, H, W] input");
  const int64_t kh = pair_arg(kernel_size, 0, "kernel_size"), kw = pair_arg(kernel_size, 1, "kernel_size");
  const int64_t sh = pair_arg(stride, 0, "stride"), sw = pair_arg(stride, 1, "stride");
  const int64_t ph = pair_arg(padding, 0, "padding"), pw = pair_arg(padding, 1, "padding");
  TORCH_CHECK(kh >= 1 && kw >= 1 && sh >= 1 && sw >= 1 && ph >= 0 && pw >= 0 && 2 * ph <= kh && 2 * pw <= kw,
              "crisp: invalid max_pool2d geometry");
  const at::Tensor x = pool_contiguous(x_in, at::MemoryFormat::ChannelsLast);
  const int64_t n_s = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
  const int64_t oh = (h + 2 * ph - kh) / sh + 1, ow = (w + 2 * pw - kw) / sw + 1;
  TORCH_CHECK(oh >= 1 && ow >= 1, "crisp: max_pool2d output would be empty for input ", h, "x", w);
  at::Tensor out = at::empty({n_s, c, oh, ow}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  const float* xd = x.data_ptr<float>();
  float* od = out.data_ptr<float>();
  parallel_range(n_s * oh, std::max<int64_t>(1, 4096 / std::max<int64_t>(1, ow * c)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t ns = r / oh, y = r % oh;
      const int64_t y0 = std::max<int64_t>(0, y * sh - ph), y1 = std::min(h, y * sh - ph + kh);
      for (int64_t xo = 0; xo < ow; ++xo) {
        const int64_t x0 = std::max<int64_t>(0, xo * sw - pw), x1 = std::min(w, xo * sw - pw + kw);
        float* o = od + ((ns * oh + y) * ow + xo) * c;
        for (int64_t ci = 0; ci < c; ++ci) o[ci] = -std::numeric_limits<float>::infinity();
        for (int64_t iy = y0; iy < y1; ++iy)
          for (int64_t ix = x0; ix < x1; ++ix) {
            const float* v = xd + ((ns * h + iy) * w + ix) * c;
            for (int64_t ci = 0; ci < c; ++ci) o[ci] = (v[ci] > o[ci] || v[ci] != v[ci]) ? v[ci] : o[ci];
          }
      }
    }
  });
  return out;
}

// Mean over H x W: [N, C, H, W] -> [N, C, 1, 1] (AdaptiveAvgPool2d(1)).
at::Tensor global_avg_pool_nhwc(const at::Tensor& x_in) {
  TORCH_CHECK(x_in.dim() == 4 && x_in.scalar_type() == at::kFloat,
              "crisp: global_avg_pool_nhwc needs a float32 [N, C, H, W] input");
  const at::Tensor x = pool_contiguous(x_in, at::MemoryFormat::ChannelsLast);
  const int64_t n_s = x.size(0), c = x.size(1), hw = x.size(2) * x.size(3);
  at::Tensor out = at::empty({n_s, c, 1, 1}, x.options());
  const float* xd = x.data_ptr<float>();
  float* od = out.data_ptr<float>();
  constexpr int64_t kChunk = 256;  // channels per work item
  const int64_t chunks = (c + kChunk - 1) / kChunk;
  parallel_items(n_s * chunks, [&](int64_t item) {
    const int64_t ns = item / chunks, c0 = (item % chunks) * kChunk, c1 = std::min(c, c0 + kChunk);
    float acc[kChunk] = {};
    for (int64_t p = 0; p < hw; ++p) {
      const float* v = xd + (ns * hw + p) * c;
      for (int64_t ci = c0; ci < c1; ++ci) acc[ci - c0] += v[ci];
    }
    const float scale = 1.0f / static_cast<float>(hw);
    for (int64_t ci = c0; ci < c1; ++ci) od[ns * c + ci] = acc[ci - c0] * scale;
  });
  return out;
}


// ============================================================================ depthwise conv (channels-last)
// The dense depthwise convs between crisp's layers (MobileNetV2), with bias and clamp fused:
// out[n, y, x, c] = clamp(bias[c] + sum_t w[t, c] * x_pad[n, y*sh + a*dh, x*sw + b*dw, c]), t = a*kw + b.
// Channels are the inner loop (vectorized by the compiler); rows of the output are the work items.
at::Tensor depthwise_conv2d_nhwc(const at::Tensor& x_in, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                 c10::IntArrayRef kernel_size, c10::IntArrayRef stride, c10::IntArrayRef padding,
                                 c10::IntArrayRef dilation, double clamp_min, double clamp_max) {
  TORCH_CHECK(x_in.dim() == 4 && x_in.scalar_type() == at::kFloat, "crisp: depthwise_conv2d_nhwc needs a float32 [N, C, H, W] input");
  const ConvGeometry geo(kernel_size, stride, padding, dilation);
  const int64_t kh = geo.kh, kw = geo.kw, sh = geo.sh, sw = geo.sw, ph = geo.ph, pw = geo.pw, dh = geo.dh, dw = geo.dw;
  const at::Tensor x = pool_contiguous(x_in, at::MemoryFormat::ChannelsLast);
  const int64_t n_s = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
  TORCH_CHECK(weight.scalar_type() == at::kFloat && weight.dim() == 2 && weight.size(0) == kh * kw && weight.size(1) == c &&
                  weight.is_contiguous(),
              "crisp: depthwise weight must be a contiguous float32 [kh*kw, C] tensor");
  const int64_t oh = (h + 2 * ph - dh * (kh - 1) - 1) / sh + 1, ow = (w + 2 * pw - dw * (kw - 1) - 1) / sw + 1;
  TORCH_CHECK(oh >= 1 && ow >= 1, "crisp: conv output would be empty for input ", h, "x", w);
  at::Tensor out = at::empty({n_s, c, oh, ow}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  at::Tensor bias_c;
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->numel() == c, "crisp: bias must have ", c, " entries");
    bias_c = bias->to(at::kFloat).contiguous();
  }
  const float* bd = bias_c.defined() ? bias_c.data_ptr<float>() : nullptr;
  const float* xd = x.data_ptr<float>();
  const float* wd = weight.data_ptr<float>();
  float* od = out.data_ptr<float>();
  const Clamp clamp = make_clamp(clamp_min, clamp_max);
  const int64_t threads = n_s * oh * ow * c * kh * kw < 200000 ? 1 : std::numeric_limits<int64_t>::max();
  const Zeros zeros(c + 16, x.options());
  const float* zd = zeros.data;
  const int64_t taps = kh * kw;
  std::vector<int64_t> tapoff(taps), tap_dy(taps), tap_dx(taps);  // each tap's place in the window
  for (int64_t ta = 0; ta < kh; ++ta)
    for (int64_t tb = 0; tb < kw; ++tb) {
      tapoff[ta * kw + tb] = (ta * dh * w + tb * dw) * c;
      tap_dy[ta * kw + tb] = ta * dh;
      tap_dx[ta * kw + tb] = tb * dw;
    }
  // output columns whose whole window lies inside the input columns
  const int64_t x_lo = std::min(ow, (pw + sw - 1) / sw);
  const int64_t x_hi = std::max(x_lo, std::min(ow, (w + pw - (kw - 1) * dw - 1) / sw + 1));
  parallel_items(n_s * oh, [&](int64_t r) {
    const int64_t ns = r / oh, y = r % oh;
    const int64_t iy0 = y * sh - ph;
    const bool row_inside = iy0 >= 0 && iy0 + (kh - 1) * dh < h;
    float* orow = od + (ns * oh + y) * ow * c;
    constexpr int VL = Isa::L;  // this ISA's native vector: a wider GCC vector spills on AVX2
    using V = VecOf<VL>::type;
    constexpr int PX = 4;  // pixels sharing each weight load
    const float* ptr[PX][64];
    std::vector<const float*> spill;
    const float** taps_of[PX];
    if (taps > 64) spill.resize(PX * taps);
    for (int p = 0; p < PX; ++p) taps_of[p] = taps > 64 ? spill.data() + p * taps : ptr[p];
    auto locate = [&](int p, int64_t xo) {  // where the taps of pixel xo read
      const int64_t ix0 = xo * sw - pw;
      const float* origin = xd + ((ns * h + iy0) * w + ix0) * c;
      if (row_inside && xo >= x_lo && xo < x_hi) {
        for (int64_t t = 0; t < taps; ++t) taps_of[p][t] = origin + tapoff[t];
        return;
      }
      for (int64_t t = 0; t < taps; ++t) {
        const int64_t iy = iy0 + tap_dy[t], ix = ix0 + tap_dx[t];
        taps_of[p][t] = iy >= 0 && iy < h && ix >= 0 && ix < w ? origin + tapoff[t] : zd;
      }
    };
    // A run of PI pixels whose windows lie inside the input: every tap is a fixed offset from the
    // run's first window, so no pointer table (its loads cost more than the FMAs they feed).
    constexpr int PI = 8;
    const int64_t step = sw * c;
    auto interior = [&](int64_t xo) {
      const float* origin = xd + ((ns * h + iy0) * w + (xo * sw - pw)) * c;
      float* o = orow + xo * c;
      int64_t ci = 0;
      for (; ci + VL <= c; ci += VL) {
        const V b = bd ? loadu<VL>(bd + ci) : V{};
        V acc[PI];
#pragma GCC unroll 8
        for (int p = 0; p < PI; ++p) acc[p] = b;
        for (int64_t t = 0; t < taps; ++t) {
          const V wv = loadu<VL>(wd + t * c + ci);
          const float* src = origin + tapoff[t] + ci;
#pragma GCC unroll 8
          for (int p = 0; p < PI; ++p) acc[p] += wv * loadu<VL>(src + p * step);
        }
#pragma GCC unroll 8
        for (int p = 0; p < PI; ++p) {
          if (clamp.on) acc[p] = clamp.apply<VL>(acc[p]);
          std::memcpy(o + p * c + ci, &acc[p], sizeof(V));
        }
      }
      for (; ci < c; ++ci)
        for (int p = 0; p < PI; ++p) {
          float a = bd ? bd[ci] : 0.f;
          for (int64_t t = 0; t < taps; ++t) a += wd[t * c + ci] * origin[tapoff[t] + ci + p * step];
          o[p * c + ci] = clamp(a);
        }
    };
    for (int64_t xo = 0; xo < ow;) {
      if (row_inside && xo >= x_lo && xo + PI <= x_hi) {
        interior(xo);
        xo += PI;
        continue;
      }
      int64_t end = std::min<int64_t>(ow, xo + PX);
      if (row_inside && xo < x_lo) end = std::min(end, x_lo);  // the interior runs start at x_lo
      const int live = static_cast<int>(end - xo);
      for (int p = 0; p < live; ++p) locate(p, xo + p);
      int64_t ci = 0;
      if (live == PX) {
        for (; ci + VL <= c; ci += VL) {
          const V b = bd ? loadu<VL>(bd + ci) : V{};
          V acc[PX];
          for (int p = 0; p < PX; ++p) acc[p] = b;
          for (int64_t t = 0; t < taps; ++t) {
            const V wv = loadu<VL>(wd + t * c + ci);
            for (int p = 0; p < PX; ++p) acc[p] += wv * loadu<VL>(taps_of[p][t] + ci);
          }
          for (int p = 0; p < PX; ++p) {
            if (clamp.on) acc[p] = clamp.apply<VL>(acc[p]);
            std::memcpy(orow + (xo + p) * c + ci, &acc[p], sizeof(V));
          }
        }
      }
      for (int p = 0; p < live; ++p) {  // what is left: pixels one at a time, then channels one at a time
        int64_t cj = ci;
        if (live != PX) {
          for (; cj + VL <= c; cj += VL) {
            V acc = bd ? loadu<VL>(bd + cj) : V{};
            for (int64_t t = 0; t < taps; ++t) acc += loadu<VL>(wd + t * c + cj) * loadu<VL>(taps_of[p][t] + cj);
            if (clamp.on) acc = clamp.apply<VL>(acc);
            std::memcpy(orow + (xo + p) * c + cj, &acc, sizeof(V));
          }
        }
        for (; cj < c; ++cj) {
          float acc = bd ? bd[cj] : 0.f;
          for (int64_t t = 0; t < taps; ++t) acc += wd[t * c + cj] * taps_of[p][t][cj];
          orow[(xo + p) * c + cj] = clamp(acc);
        }
      }
      xo = end;
    }
  }, threads);
  return out;
}

bool channel_kernel_available() { return kHaveChannelKernel; }

// The ISA this build's kernels were compiled for ("avx512", "avx2" or "default") and the largest
// m of an N:M group its channel kernel picks from (its vector lanes).
std::string isa_name() { return CRISP_ISA_NAME; }
int64_t channel_max_m() { return Isa::L; }

// [parallel jobs, items, items done by helpers, helper joins, late helper wake-ups] so far.
std::vector<int64_t> pool_stats() {
  WorkPool& p = WorkPool::get();
  return {p.stat_jobs.load(), p.stat_items.load(), p.stat_helper_items.load(), p.stat_joins.load(), p.stat_late.load()};
}

// The channel kernel specialized for the weight's n (n = 1..3 and m = 4 load the group as 4 floats;
// other m a masked load), RV row vectors per tile.
template <int RV>
void chan_dispatch(const ChanSource& src, const ChanWeights& wts, const ChanSink& sink, int64_t n_s, int64_t m, bool wide,
                   const at::Tensor& idx) {
  switch (wide ? 0 : wts.n) {
    case 1: return chan_run<1, false, RV>(src, wts, sink, n_s, m);
    case 2: return chan_run<2, false, RV>(src, wts, sink, n_s, m);
    case 3: return chan_run<3, false, RV>(src, wts, sink, n_s, m);
    case 4: {  // 4 of 4: a dense layer; the packing keeps entries in order, so entry j is input j
      const uint8_t* ix = idx.data_ptr<uint8_t>();
      bool in_order = true;
      for (int64_t i = 0, e = idx.numel(); i < e && in_order; ++i) in_order = ix[i] == ((i / 16) % 4);
      if (in_order) return chan_run<4, false, RV, true>(src, wts, sink, n_s, m);
      return chan_run<4, false, 1>(src, wts, sink, n_s, m);
    }
    default: return chan_run<0, true, 1>(src, wts, sink, n_s, m);
  }
}

at::Tensor conv2d_nhwc(const at::Tensor& x_in, const at::Tensor& vals, const at::Tensor& idx, const at::Tensor& gtap,
                       const at::Tensor& gcin, int64_t rows, int64_t n, int64_t m, const std::optional<at::Tensor>& bias,
                       const std::optional<at::Tensor>& residual, c10::IntArrayRef kernel_size, c10::IntArrayRef stride,
                       c10::IntArrayRef padding, c10::IntArrayRef dilation, double clamp_min, double clamp_max) {
  TORCH_CHECK(x_in.dim() == 4, "crisp: conv input must be [N, C, H, W], got ", x_in.dim(), " dims");
  TORCH_CHECK(x_in.scalar_type() == at::kFloat, "crisp: the cpu kernels run float32, got ", x_in.scalar_type());
  TORCH_CHECK(vals.scalar_type() == at::kFloat && vals.dim() == 4 && vals.size(3) == 16 && vals.is_contiguous(),
              "crisp: vals must be a contiguous float32 [row vectors, groups, n, 16] tensor");
  TORCH_CHECK(idx.scalar_type() == at::kByte && idx.sizes() == vals.sizes() && idx.is_contiguous(),
              "crisp: idx must be a contiguous uint8 tensor shaped like vals");
  TORCH_CHECK(gtap.scalar_type() == at::kInt && gtap.dim() == 2 && gtap.is_contiguous() && gcin.sizes() == gtap.sizes() &&
                  gcin.scalar_type() == at::kInt && gcin.is_contiguous(),
              "crisp: gtap and gcin must be contiguous int32 [block rows, groups] tensors");
  TORCH_CHECK(vals.size(2) == n && n >= 1 && m >= n && m <= Isa::L, "crisp: unsupported n:m for the channel kernel of the ",
              CRISP_ISA_NAME, " path (m must be at most ", Isa::L, ")");
  const int64_t n_s = x_in.size(0), c = x_in.size(1), h = x_in.size(2), w = x_in.size(3);
  TORCH_CHECK(c % m == 0, "crisp: the channel kernel needs input channels divisible by m");
  const ConvGeometry geo(kernel_size, stride, padding, dilation);
  const int64_t kh = geo.kh, kw = geo.kw, sh = geo.sh, sw = geo.sw, ph = geo.ph, pw = geo.pw, dh = geo.dh, dw = geo.dw;
  const int64_t nbr = gtap.size(0), groups = gtap.size(1), rvs = vals.size(0);
  TORCH_CHECK(vals.size(1) == groups && nbr > 0 && rvs % nbr == 0 && rows >= 0 && (rows + 15) / 16 <= rvs,
              "crisp: packed weight shapes do not agree");
  {  // every group must lie inside the input: cin + m <= C and tap < kh*kw (checked once per call, O(groups))
    const int32_t* t = gtap.data_ptr<int32_t>();
    const int32_t* ci = gcin.data_ptr<int32_t>();
    for (int64_t i = 0, e = gtap.numel(); i < e; ++i)
      TORCH_CHECK(t[i] >= 0 && t[i] < kh * kw && ci[i] >= 0 && ci[i] + m <= c,
                  "crisp: a packed group lies outside a ", kh, "x", kw, " conv over ", c, " channels");
  }
  const int64_t oh = (h + 2 * ph - dh * (kh - 1) - 1) / sh + 1;
  const int64_t ow = (w + 2 * pw - dw * (kw - 1) - 1) / sw + 1;
  TORCH_CHECK(oh >= 1 && ow >= 1, "crisp: conv output would be empty for input ", h, "x", w);
  at::Tensor out = at::empty({n_s, rows, oh, ow}, x_in.options().memory_format(at::MemoryFormat::ChannelsLast));
  if (n_s == 0 || rows == 0) return out;

  const bool wide = m != 4;  // a 4-float load fits m = 4 exactly; other m use a masked 16-float load
  // The input is read where it is (channels-last); taps in the zero padding read `zeros`.
  const at::Tensor x = pool_contiguous(x_in, at::MemoryFormat::ChannelsLast);
  const Zeros zeros(c + 16, x.options());
  ChanSource src{x.data_ptr<float>(), zeros.data, h * w * c, c, h, w, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, {}};
  {
    std::vector<uint8_t> used(kh * kw, 0);
    const int32_t* t = gtap.data_ptr<int32_t>();
    for (int64_t i = 0, e = gtap.numel(); i < e; ++i) used[t[i]] = 1;
    for (int64_t i = 0; i < kh * kw; ++i)
      if (used[i]) src.used_taps.push_back(static_cast<int32_t>(i));
  }
  const int64_t rvs_per_br = rvs / nbr;
  ChanWeights wts{vals.data_ptr<float>(), idx.data_ptr<uint8_t>(), gtap.data_ptr<int32_t>(), gcin.data_ptr<int32_t>(),
                  rvs_per_br, groups, n, rows, rvs};
  ChanSink sink{out.data_ptr<float>(), nullptr, nullptr, rows, make_clamp(clamp_min, clamp_max)};
  const Epilogue epilogue(bias, residual, rows, out);
  sink.bias = epilogue.bias_ptr();
  sink.residual = epilogue.residual_ptr();
  if (!sink.clamp.on) {
    sink.clamp.lo = -std::numeric_limits<float>::infinity();
    sink.clamp.hi = std::numeric_limits<float>::infinity();
  }
  if constexpr (Isa::RV == 2) {
    if (rvs_per_br % 2 == 0) {
      chan_dispatch<2>(src, wts, sink, n_s, m, wide, idx);
      return out;
    }
  }
  chan_dispatch<1>(src, wts, sink, n_s, m, wide, idx);
  return out;
}


// ============================================================================ dense conv (GEMM)
// A conv left dense (or whose pruned weight runs best dense) as a GEMM on channels-last
// activations, batch and positions merged: out[p, o] = sum_k patch[p, k] w[k, o], k in (kh, kw,
// cin) order; for a 1x1 conv of stride 1 without padding the patch is the input pixel itself.
// The weight is packed in panels of 16 output channels, panels[o / 16, k, o % 16] (zero past
// the last channel). A register tile is GP positions x 2 vectors of outputs:
// per input channel two weight loads and GP broadcasts feed 2 GP FMAs; bias, residual and clamp
// are fused into the store. MobileNetV2's small-K expansions (K = 16..32, left dense since K is
// below one block) were 2x slower on torch's one-thread conv plus its separate clamp pass.
// Where a GEMM tile's outputs go: bias (padded with zeros to whole vectors), residual, clamp.
struct GemmSink {
  float* out;
  const float* residual;
  const float* bias;
  int64_t rows;
  IV lo, hi;  // the clamp; -inf / inf when there is none (max / min keep NaN, like torch.clamp)
};

// The tile of positions [p0, p0 + live) x vectors v0 .. v0 + VV - 1, its epilogue fused: the
// accumulators go straight from registers to the output (FULL: live == PP, the loop unrolled).
template <int PP, int VV, bool RES, bool FULL>
inline void gemm_tile(const float* x, int64_t k, int live, const float* const (&wv)[2], const GemmSink& sink,
                      int64_t p0, int64_t v0) {
  IV acc[PP][VV];
#pragma GCC unroll 16
  for (int q = 0; q < PP; ++q)
    for (int v = 0; v < VV; ++v) acc[q][v] = Isa::zero();
  const float* xp[PP];
  for (int q = 0; q < PP; ++q) xp[q] = x + (FULL ? q : std::min(q, live - 1)) * k;  // past `live`: a repeat, never stored
  for (int64_t i = 0; i < k; ++i) {
    IV w[VV];
    for (int v = 0; v < VV; ++v) w[v] = Isa::load(wv[v] + i * 16);
#pragma GCC unroll 16
    for (int q = 0; q < PP; ++q) {
      const IV b = Isa::set1(xp[q][i]);
      for (int v = 0; v < VV; ++v) acc[q][v] = Isa::fma(w[v], b, acc[q][v]);
    }
  }
  for (int v = 0; v < VV; ++v) {
    const int64_t r0 = (v0 + v) * Isa::L, lanes = std::min<int64_t>(Isa::L, sink.rows - r0);
    const IV b = Isa::load(sink.bias + r0);
#pragma GCC unroll 16
    for (int q = 0; q < PP; ++q) {
      if (!FULL && q >= live) break;
      const int64_t o = (p0 + q) * sink.rows + r0;
      IV y = Isa::add(acc[q][v], b);
      if constexpr (RES) y = Isa::add(y, Isa::load_lanes(sink.residual + o, lanes));
      Isa::store_lanes(sink.out + o, Isa::clamp(y, sink.lo, sink.hi), lanes);
    }
  }
}

at::Tensor dense_conv2d_nhwc(const at::Tensor& x_in, const at::Tensor& panels, int64_t rows, const std::optional<at::Tensor>& bias,
                             const std::optional<at::Tensor>& residual, c10::IntArrayRef kernel_size, c10::IntArrayRef stride,
                             c10::IntArrayRef padding, c10::IntArrayRef dilation, double clamp_min, double clamp_max) {
  TORCH_CHECK(x_in.dim() == 4 && x_in.scalar_type() == at::kFloat, "crisp: dense_conv2d_nhwc needs a float32 [N, C, H, W] input");
  TORCH_CHECK(panels.scalar_type() == at::kFloat && panels.dim() == 3 && panels.size(2) == 16 && panels.is_contiguous() &&
                  rows >= 1 && panels.size(0) == (rows + 15) / 16,
              "crisp: panels must be a contiguous float32 [ceil(rows / 16), K, 16] tensor");
  const ConvGeometry geo(kernel_size, stride, padding, dilation);
  const int64_t k = panels.size(1), c = x_in.size(1), taps = geo.kh * geo.kw;
  TORCH_CHECK(taps * c == k, "crisp: the packed weight has ", k, " input features but a ", geo.kh, "x", geo.kw, " conv over ",
              c, " channels has ", taps * c);
  const at::Tensor x = pool_contiguous(x_in, at::MemoryFormat::ChannelsLast);
  const int64_t n_s = x.size(0), h = x.size(2), w = x.size(3);
  const int64_t oh = (h + 2 * geo.ph - geo.dh * (geo.kh - 1) - 1) / geo.sh + 1;
  const int64_t ow = (w + 2 * geo.pw - geo.dw * (geo.kw - 1) - 1) / geo.sw + 1;
  TORCH_CHECK(oh >= 1 && ow >= 1, "crisp: conv output would be empty for input ", h, "x", w);
  at::Tensor out = at::empty({n_s, rows, oh, ow}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  const int64_t positions = n_s * oh * ow;
  if (positions == 0) return out;
  // a 1x1 conv of stride 1 without padding reads its inputs where they are; any other conv
  // gathers each tile's patches (im2col of PP positions, zeros in the padding) into a buffer
  const bool direct = taps == 1 && geo.sh == 1 && geo.sw == 1 && geo.ph == 0 && geo.pw == 0;
  const Epilogue epilogue(bias, residual, rows, out);
  constexpr int PP = Isa::GP, L = Isa::L;
  const int64_t vectors = (rows + L - 1) / L;
  std::vector<float> bias_pad(vectors * L, 0.f);
  if (epilogue.bias_ptr()) std::memcpy(bias_pad.data(), epilogue.bias_ptr(), sizeof(float) * rows);
  const Clamp clamp = make_clamp(clamp_min, clamp_max);
  const float inf = std::numeric_limits<float>::infinity();
  const GemmSink sink{out.data_ptr<float>(), epilogue.residual_ptr(), bias_pad.data(), rows,
                      Isa::set1(clamp.on ? clamp.lo : -inf), Isa::set1(clamp.on ? clamp.hi : inf)};
  constexpr int64_t kMinParallelFmas = 24000;  // as the channel kernel: below this a second thread costs more
  const int64_t threads = positions * rows * k < kMinParallelFmas ? 1 : std::max<int>(1, at::get_num_threads());
  // position chunks: at least 4 per thread, at most 16 tiles (its inputs stay in L1 / L2 for every output tile)
  int64_t chunk = (positions + 4 * threads - 1) / (4 * threads);
  chunk = std::min<int64_t>(16 * PP, std::max<int64_t>(PP, (chunk + PP - 1) / PP * PP));
  const int64_t chunks = (positions + chunk - 1) / chunk;
  const float* xd = x.data_ptr<float>();
  const float* pd = panels.data_ptr<float>();
  // one tile: positions [p0, p0 + live) (their inputs at xt, K floats each) x vectors v0, v0 + 1 (or only v0, the last one)
  auto tile = [&](const float* xt, int64_t p0, int live, int64_t v0) {
    const int nv = vectors - v0 >= 2 ? 2 : 1;
    const float* wv[2];
    for (int v = 0; v < 2; ++v) {
      const int64_t o = (v0 + std::min(v, nv - 1)) * L;
      wv[v] = pd + (o / 16) * k * 16 + o % 16;
    }
    const bool res = sink.residual != nullptr, full = live == PP;
    if (nv == 2) {
      if (res) {
        full ? gemm_tile<PP, 2, true, true>(xt, k, live, wv, sink, p0, v0) : gemm_tile<PP, 2, true, false>(xt, k, live, wv, sink, p0, v0);
      } else {
        full ? gemm_tile<PP, 2, false, true>(xt, k, live, wv, sink, p0, v0) : gemm_tile<PP, 2, false, false>(xt, k, live, wv, sink, p0, v0);
      }
    } else {
      res ? gemm_tile<PP, 1, true, false>(xt, k, live, wv, sink, p0, v0) : gemm_tile<PP, 1, false, false>(xt, k, live, wv, sink, p0, v0);
    }
  };
  // patch[q * K + tap * C + ci] = x_pad[sample, oy*sh + a*dh, ox*sw + b*dw, ci] for tap (a, b) of position p0 + q
  auto gather = [&](float* patch, int64_t p0, int live) {
    int64_t ns = p0 / (oh * ow), oy = (p0 / ow) % oh, ox = p0 % ow;
    for (int q = 0; q < live; ++q) {
      const float* sample = xd + ns * h * w * c;
      for (int64_t a = 0; a < geo.kh; ++a) {
        const int64_t iy = oy * geo.sh - geo.ph + a * geo.dh;
        for (int64_t b = 0; b < geo.kw; ++b) {
          const int64_t ix = ox * geo.sw - geo.pw + b * geo.dw;
          float* dst = patch + q * k + (a * geo.kw + b) * c;
          if (iy >= 0 && iy < h && ix >= 0 && ix < w) {
            const float* src = sample + (iy * w + ix) * c;
            for (int64_t ci = 0; ci < c; ++ci) dst[ci] = src[ci];  // a loop, not memcpy: c is 3 on a stem
          } else {
            for (int64_t ci = 0; ci < c; ++ci) dst[ci] = 0.f;
          }
        }
      }
      if (++ox == ow) {
        ox = 0;
        if (++oy == oh) {
          oy = 0;
          ++ns;
        }
      }
    }
  };
  // A weight that fits in L1 is read whole for each tile of positions (a gathered tile is used
  // for every output vector before the next); a larger one, by direct reads, a pair of vectors at
  // a time for the chunk's positions.
  const bool weight_in_l1 = panels.numel() * static_cast<int64_t>(sizeof(float)) <= 32 * 1024;
  parallel_items(chunks, [&](int64_t ch) {
    const int64_t p_begin = ch * chunk, p_end = std::min(positions, p_begin + chunk);
    if (!direct) {
      std::vector<float> patch(PP * k);
      for (int64_t p0 = p_begin; p0 < p_end; p0 += PP) {
        const int live = static_cast<int>(std::min<int64_t>(PP, p_end - p0));
        gather(patch.data(), p0, live);
        for (int64_t v0 = 0; v0 < vectors; v0 += 2) tile(patch.data(), p0, live, v0);
      }
    } else if (weight_in_l1) {
      for (int64_t p0 = p_begin; p0 < p_end; p0 += PP)
        for (int64_t v0 = 0; v0 < vectors; v0 += 2) tile(xd + p0 * k, p0, static_cast<int>(std::min<int64_t>(PP, p_end - p0)), v0);
    } else {
      for (int64_t v0 = 0; v0 < vectors; v0 += 2)
        for (int64_t p0 = p_begin; p0 < p_end; p0 += PP) tile(xd + p0 * k, p0, static_cast<int>(std::min<int64_t>(PP, p_end - p0)), v0);
    }
  }, threads);
  return out;
}

#include "expand_depthwise.h"

}  // namespace
}  // namespace crisp_cpu

// The op namespace is per ISA build (crisp_avx512, crisp_avx2, crisp_default), so that every
// build can be loaded into one process and each compiled graph calls the build it was made for.
#ifndef CRISP_NS
#define CRISP_NS crisp_default
#endif

TORCH_LIBRARY_FRAGMENT(CRISP_NS, m) {
  m.def(
      "hybrid_sparse_conv2d_fast(Tensor x, Tensor row_ptr, Tensor cols, Tensor vals, int in_features, Tensor? bias, Tensor? residual, "
      "int[] kernel_size, int[] stride, int[] padding, int[] dilation, float clamp_min, float clamp_max, "
      "bool channels_last) -> Tensor");
  m.def(
      "hybrid_sparse_conv2d_nhwc(Tensor x, Tensor vals, Tensor idx, Tensor gtap, Tensor gcin, int rows, int n, int m, "
      "Tensor? bias, Tensor? residual, int[] kernel_size, int[] stride, int[] padding, int[] dilation, "
      "float clamp_min, float clamp_max) -> Tensor");
  m.def("channel_kernel_available() -> bool");
  m.def("isa_name() -> str");
  m.def("channel_max_m() -> int");
  m.def("pool_stats() -> int[]");
  m.def("max_pool2d_nhwc(Tensor x, int[] kernel_size, int[] stride, int[] padding) -> Tensor");
  m.def("global_avg_pool_nhwc(Tensor x) -> Tensor");
  m.def(
      "depthwise_conv2d_nhwc(Tensor x, Tensor weight, Tensor? bias, int[] kernel_size, int[] stride, int[] padding, "
      "int[] dilation, float clamp_min, float clamp_max) -> Tensor");
  m.def(
      "dense_conv2d_nhwc(Tensor x, Tensor panels, int rows, Tensor? bias, Tensor? residual, int[] kernel_size, "
      "int[] stride, int[] padding, int[] dilation, float clamp_min, float clamp_max) -> Tensor");
  m.def(
      "expand_depthwise_nhwc(Tensor x, Tensor panels, int rows, Tensor? expand_bias, float expand_min, float expand_max, "
      "Tensor weight, Tensor? bias, int[] kernel_size, int[] stride, int[] padding, int[] dilation, "
      "float clamp_min, float clamp_max) -> Tensor");
  m.def(
      "hybrid_sparse_linear_fast(Tensor x, Tensor row_ptr, Tensor cols, Tensor vals, int in_features, Tensor? bias, "
      "float clamp_min, float clamp_max) -> Tensor");
}

TORCH_LIBRARY_IMPL(CRISP_NS, CPU, m) {
  m.impl("hybrid_sparse_conv2d_fast", &crisp_cpu::conv2d_fast);
  m.impl("hybrid_sparse_linear_fast", &crisp_cpu::linear_fast);
  m.impl("hybrid_sparse_conv2d_nhwc", &crisp_cpu::conv2d_nhwc);
  m.impl("max_pool2d_nhwc", &crisp_cpu::max_pool2d_nhwc);
  m.impl("global_avg_pool_nhwc", &crisp_cpu::global_avg_pool_nhwc);
  m.impl("depthwise_conv2d_nhwc", &crisp_cpu::depthwise_conv2d_nhwc);
  m.impl("dense_conv2d_nhwc", &crisp_cpu::dense_conv2d_nhwc);
  m.impl("expand_depthwise_nhwc", &crisp_cpu::expand_depthwise_nhwc);
}

TORCH_LIBRARY_IMPL(CRISP_NS, CompositeExplicitAutograd, m) {
  m.impl("channel_kernel_available", &crisp_cpu::channel_kernel_available);
  m.impl("isa_name", &crisp_cpu::isa_name);
  m.impl("channel_max_m", &crisp_cpu::channel_max_m);
  m.impl("pool_stats", &crisp_cpu::pool_stats);
}
