// 2-D convolutions in oneDNN's kernels for XLA on CPU, as three typed FFI handlers:
// XjConvForward(x, w) -> y, XjConvBackwardData(dy, w) -> dx, XjConvBackwardWeights(x, dy) -> dw.
//
// Layouts are the models' own: x and y NHWC, w HWIO with I = C / groups (grouped convs, the
// depthwise ones included, as XLA's feature_group_count). float32 only. Attributes: strides
// (sh, sw), explicit padding (pt, pb, pl, pr) and groups.
//
// Threads: oneDNN's OpenMP threads would compete with XLA's own for the same cores, so each
// call splits its batch into as many parts as XLA's intra-op pool has threads, runs each part
// single-threaded as a task on that pool, and returns a future: the calling thread goes on with
// other operations, as it does for XLA's own convolutions. The kernel gradient sums the parts'.
// Built at first use by xception_jax/models/ops/onednn.py.
#include <algorithm>
#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

extern "C" void omp_set_num_threads(int);

namespace {

namespace ffi = xla::ffi;
using dnnl::memory;

struct Geometry {
  int64_t n, h, w, c, kh, kw, o, oh, ow, sh, sw, pt, pb, pl, pr, groups;

  auto key() const { return std::make_tuple(n, h, w, c, kh, kw, o, oh, ow, sh, sw, pt, pb, pl, pr, groups); }
  Geometry with_batch(int64_t batch) const { Geometry g = *this; g.n = batch; return g; }
  memory::desc src() const { return {{n, c, h, w}, memory::data_type::f32, memory::format_tag::nhwc}; }
  memory::desc dst() const { return {{n, o, oh, ow}, memory::data_type::f32, memory::format_tag::nhwc}; }
  memory::dims weight_dims() const {
    if (groups == 1) return {o, c, kh, kw};
    return {groups, o / groups, c / groups, kh, kw};
  }
  // HWIO: o innermost, then i, kw, kh; a group's outputs are consecutive along o.
  memory::desc weights() const {
    int64_t i = c / groups;
    memory::dims strides = {1, o, kw * i * o, i * o};
    if (groups > 1) strides.insert(strides.begin(), o / groups);
    return {weight_dims(), memory::data_type::f32, strides};
  }
  memory::desc any_weights() const { return {weight_dims(), memory::data_type::f32, memory::format_tag::any}; }
  int64_t src_size() const { return h * w * c; }
  int64_t dst_size() const { return oh * ow * o; }
};

dnnl::engine& engine() {
  static dnnl::engine e(dnnl::engine::kind::cpu, 0);
  return e;
}

// The three primitives of one geometry, created once: oneDNN picks its weight layout ("any")
// and each call reorders to or from HWIO.
struct Primitives {
  dnnl::convolution_forward::primitive_desc forward_pd;
  dnnl::convolution_forward forward;
  dnnl::convolution_backward_data::primitive_desc data_pd;
  dnnl::convolution_backward_data data;
  dnnl::convolution_backward_weights::primitive_desc weights_pd;
  dnnl::convolution_backward_weights weights;
};

std::shared_ptr<Primitives> primitives(const Geometry& g) {
  static std::mutex mutex;
  static std::map<decltype(g.key()), std::shared_ptr<Primitives>> cache;
  std::lock_guard<std::mutex> lock(mutex);
  auto& p = cache[g.key()];
  if (p) return p;
  using namespace dnnl;
  omp_set_num_threads(1);  // Kernels are chosen for the one thread each part runs on.
  // Parts of different calls run at once: each execution gets its own scratchpad.
  primitive_attr attr;
  attr.set_scratchpad_mode(scratchpad_mode::user);
  memory::dims strides = {g.sh, g.sw}, pad_l = {g.pt, g.pl}, pad_r = {g.pb, g.pr};
  p = std::make_shared<Primitives>();
  p->forward_pd = convolution_forward::primitive_desc(
      engine(), prop_kind::forward_training, algorithm::convolution_direct, g.src(),
      g.any_weights(), g.dst(), strides, pad_l, pad_r, attr);
  p->forward = convolution_forward(p->forward_pd);
  p->data_pd = convolution_backward_data::primitive_desc(
      engine(), algorithm::convolution_direct, g.src(), g.any_weights(), g.dst(), strides,
      pad_l, pad_r, p->forward_pd, attr);
  p->data = convolution_backward_data(p->data_pd);
  p->weights_pd = convolution_backward_weights::primitive_desc(
      engine(), algorithm::convolution_direct, g.src(), g.any_weights(), g.dst(), strides,
      pad_l, pad_r, p->forward_pd, attr);
  p->weights = convolution_backward_weights(p->weights_pd);
  return p;
}

// Images [first(i), first(i + 1)) form part i of `parts`.
struct Split {
  int64_t n, parts;
  int64_t first(int64_t i) const { return n * i / parts; }
  int64_t size(int64_t i) const { return first(i + 1) - first(i); }
};

Split split(ffi::ThreadPool& pool, int64_t n) {
  return {n, std::max<int64_t>(1, std::min<int64_t>(pool.num_threads(), n))};
}

// The primitives of each part's batch size, looked up once per call on the calling thread.
std::vector<std::shared_ptr<Primitives>> part_primitives(const Geometry& g, const Split& s) {
  std::vector<std::shared_ptr<Primitives>> parts;
  for (int64_t i = 0; i < s.parts; ++i) parts.push_back(primitives(g.with_batch(s.size(i))));
  return parts;
}

// Runs part(i) for every part as a task on XLA's pool; the future completes once all have
// run and then `after`.
ffi::Future run_parts(ffi::ThreadPool& pool, const Split& s, std::function<void(int64_t)> part,
                      std::function<void()> after = nullptr) {
  struct State {
    std::atomic<int64_t> left;
    ffi::Promise promise;
    std::function<void(int64_t)> part;
    std::function<void()> after;
  };
  auto state = std::make_shared<State>();
  state->left = s.parts;
  state->part = std::move(part);
  state->after = std::move(after);
  ffi::Future future(state->promise);
  for (int64_t i = 0; i < s.parts; ++i) {
    pool.Schedule([state, i] {
      omp_set_num_threads(1);
      state->part(i);
      if (state->left.fetch_sub(1) == 1) {
        if (state->after) state->after();
        state->promise.SetAvailable();
      }
    });
  }
  return future;
}

void execute(const dnnl::primitive& primitive, const memory::desc& scratchpad,
             std::unordered_map<int, memory> args) {
  dnnl::stream stream(engine());
  args.insert({DNNL_ARG_SCRATCHPAD, memory(scratchpad, engine())});
  primitive.execute(stream, args);
  stream.wait();
}

// HWIO weights at `data` in the layout `layout`: themselves or a reordered copy.
std::shared_ptr<memory> weights_as(const memory::desc& layout, const Geometry& g, float* data) {
  memory user(g.weights(), engine(), data);
  if (layout == g.weights()) return std::make_shared<memory>(user);
  auto copy = std::make_shared<memory>(layout, engine());
  omp_set_num_threads(1);
  dnnl::stream stream(engine());
  dnnl::reorder(user, *copy).execute(stream, user, *copy);
  stream.wait();
  return copy;
}

Geometry geometry(ffi::Span<const int64_t> x, ffi::Span<const int64_t> w,
                  ffi::Span<const int64_t> y, int64_t sh, int64_t sw, int64_t pt, int64_t pb,
                  int64_t pl, int64_t pr, int64_t groups) {
  return {x[0], x[1], x[2], x[3], w[0], w[1], w[3], y[1], y[2], sh, sw, pt, pb, pl, pr, groups};
}

using F32 = ffi::Buffer<ffi::F32, 4>;
using F32Result = ffi::ResultBuffer<ffi::F32, 4>;

// The forward pass (x → y) or the input gradient (dy → dx): a map, the HWIO kernel and the
// map it gives, each part of the batch a task.
ffi::Future through_kernel(ffi::ThreadPool& pool, const Geometry& g, bool forward,
                           float* kernel_data, float* in, float* out) {
  Split s = split(pool, g.n);
  auto parts = part_primitives(g, s);
  auto kernel = weights_as(forward ? parts[0]->forward_pd.weights_desc()
                                   : parts[0]->data_pd.weights_desc(), g, kernel_data);
  float *x = forward ? in : out, *y = forward ? out : in;
  return run_parts(pool, s, [=](int64_t i) {
    Geometry part = g.with_batch(s.size(i));
    const auto& p = parts[i];
    // A part of another size may have its kernels choose another weight layout.
    const memory::desc& layout = forward ? p->forward_pd.weights_desc() : p->data_pd.weights_desc();
    auto part_kernel = layout == kernel->get_desc() ? kernel : weights_as(layout, g, kernel_data);
    memory x_part(part.src(), engine(), x + s.first(i) * g.src_size());
    memory y_part(part.dst(), engine(), y + s.first(i) * g.dst_size());
    if (forward) {
      execute(p->forward, p->forward_pd.scratchpad_desc(),
              {{DNNL_ARG_SRC, x_part}, {DNNL_ARG_WEIGHTS, *part_kernel}, {DNNL_ARG_DST, y_part}});
    } else {
      execute(p->data, p->data_pd.scratchpad_desc(),
              {{DNNL_ARG_DIFF_DST, y_part}, {DNNL_ARG_WEIGHTS, *part_kernel},
               {DNNL_ARG_DIFF_SRC, x_part}});
    }
  });
}

ffi::Future Forward(ffi::ThreadPool pool, F32 x, F32 w, F32Result y, int64_t sh, int64_t sw,
                    int64_t pt, int64_t pb, int64_t pl, int64_t pr, int64_t groups) {
  Geometry g = geometry(x.dimensions(), w.dimensions(), y->dimensions(), sh, sw, pt, pb, pl, pr, groups);
  return through_kernel(pool, g, true, w.typed_data(), x.typed_data(), y->typed_data());
}

ffi::Future BackwardData(ffi::ThreadPool pool, F32 dy, F32 w, F32Result dx, int64_t sh,
                         int64_t sw, int64_t pt, int64_t pb, int64_t pl, int64_t pr,
                         int64_t groups) {
  Geometry g = geometry(dx->dimensions(), w.dimensions(), dy.dimensions(), sh, sw, pt, pb, pl, pr, groups);
  return through_kernel(pool, g, false, w.typed_data(), dy.typed_data(), dx->typed_data());
}

// The kernel gradient: each part of the batch sums its own images' gradients, in the layout
// the first part's primitive writes (where the parts agree; else HWIO), into its own buffer —
// part 0 straight into the result where that layout is HWIO. The part that finishes last adds
// the others to part 0's and reorders the total to HWIO once.
ffi::Future BackwardWeights(ffi::ThreadPool pool, F32 x, F32 dy, F32Result dw, int64_t sh,
                            int64_t sw, int64_t pt, int64_t pb, int64_t pl, int64_t pr,
                            int64_t groups) {
  Geometry g = geometry(x.dimensions(), dw->dimensions(), dy.dimensions(), sh, sw, pt, pb, pl, pr, groups);
  Split s = split(pool, g.n);
  auto parts = part_primitives(g, s);
  memory::desc layout = parts[0]->weights_pd.diff_weights_desc();
  for (const auto& p : parts) {
    if (p->weights_pd.diff_weights_desc() != layout) layout = g.weights();
  }
  memory result(g.weights(), engine(), dw->typed_data());
  auto sums = std::make_shared<std::vector<memory>>();
  for (int64_t i = 0; i < s.parts; ++i) {
    sums->push_back(i == 0 && layout == g.weights() ? result : memory(layout, engine()));
  }
  float *in = x.typed_data(), *grad = dy.typed_data();
  auto add_and_reorder = [=]() mutable {
    float* total = static_cast<float*>((*sums)[0].get_data_handle());
    size_t size = layout.get_size() / sizeof(float);
    for (int64_t i = 1; i < s.parts; ++i) {
      const float* part = static_cast<const float*>((*sums)[i].get_data_handle());
      for (size_t k = 0; k < size; ++k) total[k] += part[k];
    }
    if (total != result.get_data_handle()) {
      dnnl::stream stream(engine());
      dnnl::reorder((*sums)[0], result).execute(stream, (*sums)[0], result);
      stream.wait();
    }
  };
  return run_parts(pool, s, [=](int64_t i) {
    Geometry part = g.with_batch(s.size(i));
    const auto& p = parts[i];
    memory sum = (*sums)[i];
    bool reorder = p->weights_pd.diff_weights_desc() != sum.get_desc();
    memory into = reorder ? memory(p->weights_pd.diff_weights_desc(), engine()) : sum;
    execute(p->weights, p->weights_pd.scratchpad_desc(),
            {{DNNL_ARG_SRC, memory(part.src(), engine(), in + s.first(i) * g.src_size())},
             {DNNL_ARG_DIFF_DST, memory(part.dst(), engine(), grad + s.first(i) * g.dst_size())},
             {DNNL_ARG_DIFF_WEIGHTS, into}});
    if (reorder) {
      dnnl::stream stream(engine());
      dnnl::reorder(into, sum).execute(stream, into, sum);
      stream.wait();
    }
  }, add_and_reorder);
}

}  // namespace

#define XJ_CONV_ATTRIBUTES                                                                 \
  .Attr<int64_t>("sh").Attr<int64_t>("sw").Attr<int64_t>("pt").Attr<int64_t>("pb")         \
      .Attr<int64_t>("pl").Attr<int64_t>("pr").Attr<int64_t>("groups")

XLA_FFI_DEFINE_HANDLER_SYMBOL(XjConvForward, Forward,
                              ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<F32>().Arg<F32>()
                                  .Ret<F32>() XJ_CONV_ATTRIBUTES);
XLA_FFI_DEFINE_HANDLER_SYMBOL(XjConvBackwardData, BackwardData,
                              ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<F32>().Arg<F32>()
                                  .Ret<F32>() XJ_CONV_ATTRIBUTES);
XLA_FFI_DEFINE_HANDLER_SYMBOL(XjConvBackwardWeights, BackwardWeights,
                              ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<F32>().Arg<F32>()
                                  .Ret<F32>() XJ_CONV_ATTRIBUTES);
