// C ABI for ferrotune-quant's weight-recomputing matmul (src/recompute.rs is the Rust side).
//
// `y = x · Wᵀ` as a libtorch autograd Function whose graph node keeps only a handle to the *quantized*
// weight, not the dense W: the forward builds W through a Rust callback, multiplies and drops it; the
// backward builds it again for `dx = dy · W` (bitsandbytes' MatMul4Bit does the same). W gets no gradient.
// Without this, autograd saves every dense dequantized projection of a recomputed layer until its
// backward (~400 MB per Llama-2-7B layer in bf16), the largest transient of QLoRA training.
//
// Ownership: the Rust state (`state`) is owned by a refcounted WeightSource; `drop(state)` runs exactly
// once, when the last reference goes (after the forward when no graph was recorded, or when the graph
// node is released). Errors (C++ exceptions) come back as a malloc'd message freed by
// ftq_free_error; tensors cross as heap `at::Tensor*`, the representation tch uses.

#include <torch/csrc/autograd/custom_function.h>

#include <cstdlib>
#include <cstring>
#include <exception>
#include <stdexcept>
#include <utility>

extern "C" {
// Returns a new heap `at::Tensor*` holding the dense weight [out, in], or NULL on failure.
typedef void* (*ftq_weight_fn)(void* state);
typedef void (*ftq_drop_fn)(void* state);
}

namespace {

struct WeightSource : torch::CustomClassHolder {
  void* state;
  ftq_weight_fn make;
  ftq_drop_fn drop;

  WeightSource(void* s, ftq_weight_fn m, ftq_drop_fn d) : state(s), make(m), drop(d) {}
  WeightSource(const WeightSource&) = delete;
  WeightSource& operator=(const WeightSource&) = delete;
  ~WeightSource() override { drop(state); }

  at::Tensor weight() const {
    auto* p = static_cast<at::Tensor*>(make(state));
    if (p == nullptr) {
      throw std::runtime_error("rebuilding the dense weight of a quantized linear failed");
    }
    at::Tensor w = std::move(*p);
    delete p;
    return w;
  }
};

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

struct RecomputedMatmul : torch::autograd::Function<RecomputedMatmul> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x,
                            const c10::intrusive_ptr<WeightSource>& src) {
    at::Tensor y = at::matmul(x, src->weight().t());
    ctx->saved_data["weight"] = c10::IValue::make_capsule(src);
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    if (!grads[0].defined()) {
      return {at::Tensor(), at::Tensor()};
    }
    auto src = c10::static_intrusive_pointer_cast<WeightSource>(ctx->saved_data["weight"].toCapsule());
    return {at::matmul(grads[0], src->weight()), at::Tensor()};
  }
};

char* copy_message(const char* what) {
  char* m = static_cast<char*>(std::malloc(std::strlen(what) + 1));
  if (m != nullptr) std::strcpy(m, what);
  return m;
}

}  // namespace

extern "C" {

// `x · Wᵀ` for the tensor at `x` (an `at::Tensor*`), W from `make(state)`. Takes ownership of `state`.
// Returns a new `at::Tensor*`, or NULL with `*err` set.
void* ftq_recomputed_matmul(const void* x, void* state, ftq_weight_fn make, ftq_drop_fn drop, char** err) {
  *err = nullptr;
  c10::intrusive_ptr<WeightSource> src;
  try {
    src = c10::make_intrusive<WeightSource>(state, make, drop);
  } catch (const std::exception& e) {
    drop(state);
    *err = copy_message(e.what());
    return nullptr;
  }
  try {
    at::Tensor y = RecomputedMatmul::apply(*static_cast<const at::Tensor*>(x), src);
    return new at::Tensor(std::move(y));
  } catch (const std::exception& e) {
    *err = copy_message(e.what());
    return nullptr;
  }
}

void ftq_free_error(char* err) { std::free(err); }

}  // extern "C"
