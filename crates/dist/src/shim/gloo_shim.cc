// C ABI over Debian's libgloo for ferrotune-dist (src/gloo.rs is the Rust side).
//
// One context per process group: tcp device, rendezvous through a store whose set/get/wait are Rust
// callbacks (the TCP key-value store in src/store.rs), and the collectives on raw buffers. Every function
// catches all C++ exceptions and returns them as a malloc'd message (NULL on success), freed by
// ftg_free_error. Element kinds: 0 = f32, 1 = f16, 2 = bf16.

#include <gloo/allgather.h>
#include <gloo/allreduce.h>
#include <gloo/barrier.h>
#include <gloo/broadcast.h>
#include <gloo/math.h>
#include <gloo/rendezvous/context.h>
#include <gloo/rendezvous/prefix_store.h>
#include <gloo/rendezvous/store.h>
#include <gloo/transport/tcp/device.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

extern "C" {
// Callbacks into Rust. They return 0 on success; otherwise they have put a message into `err` (a
// std::vector<char>* filled through ftg_vec_assign).
typedef int (*ftg_set_fn)(void* store, const char* key, size_t key_len, const char* data, size_t len,
                          void* err);
typedef int (*ftg_get_fn)(void* store, const char* key, size_t key_len, void* out, void* err);
typedef int (*ftg_wait_fn)(void* store, const char* key, size_t key_len, int64_t timeout_ms, void* err);

struct ftg_store_vtable {
  void* store;
  ftg_set_fn set;
  ftg_get_fn get;
  ftg_wait_fn wait;
  int64_t default_timeout_ms;
};

void ftg_vec_assign(void* vec, const char* data, size_t len) {
  auto* v = static_cast<std::vector<char>*>(vec);
  v->assign(data, data + len);
}
}

namespace {

std::string as_string(const std::vector<char>& v) { return std::string(v.begin(), v.end()); }

class CallbackStore : public gloo::rendezvous::Store {
 public:
  explicit CallbackStore(ftg_store_vtable vt) : vt_(vt) {}

  void set(const std::string& key, const std::vector<char>& data) override {
    std::vector<char> err;
    if (vt_.set(vt_.store, key.data(), key.size(), data.data(), data.size(), &err) != 0) {
      throw std::runtime_error("store set " + key + ": " + as_string(err));
    }
  }

  std::vector<char> get(const std::string& key) override {
    wait({key});
    std::vector<char> out, err;
    if (vt_.get(vt_.store, key.data(), key.size(), &out, &err) != 0) {
      throw std::runtime_error("store get " + key + ": " + as_string(err));
    }
    return out;
  }

  void wait(const std::vector<std::string>& keys) override {
    wait(keys, std::chrono::milliseconds(vt_.default_timeout_ms));
  }

  void wait(const std::vector<std::string>& keys, const std::chrono::milliseconds& timeout) override {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    for (const auto& key : keys) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                      deadline - std::chrono::steady_clock::now())
                      .count();
      std::vector<char> err;
      if (vt_.wait(vt_.store, key.data(), key.size(), left < 0 ? 0 : left, &err) != 0) {
        throw std::runtime_error("store wait " + key + ": " + as_string(err));
      }
    }
  }

 private:
  ftg_store_vtable vt_;
};

struct Group {
  std::unique_ptr<CallbackStore> store;
  std::shared_ptr<gloo::transport::Device> device;
  std::shared_ptr<gloo::rendezvous::Context> context;
  std::chrono::milliseconds timeout;
  uint32_t tag = 0;
  uint32_t next_tag() { return tag++; }
};

char* error_copy(const std::string& what) {
  char* out = static_cast<char*>(std::malloc(what.size() + 1));
  if (out != nullptr) {
    std::memcpy(out, what.c_str(), what.size() + 1);
  }
  return out;
}

template <typename F>
char* guarded(F&& f) {
  try {
    f();
    return nullptr;
  } catch (const std::exception& e) {
    return error_copy(e.what());
  } catch (...) {
    return error_copy("unknown C++ exception");
  }
}

// bf16: widen to f32, add, round to nearest even (NaN kept quiet).
inline float bf16_to_f32(uint16_t h) {
  uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

inline uint16_t f32_to_bf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  if ((bits & 0x7fffffffu) > 0x7f800000u) {
    return static_cast<uint16_t>((bits >> 16) | 0x40);
  }
  uint32_t rounding = 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>((bits + rounding) >> 16);
}

void sum_bf16(void* c_, const void* a_, const void* b_, size_t n) {
  auto* c = static_cast<uint16_t*>(c_);
  auto* a = static_cast<const uint16_t*>(a_);
  auto* b = static_cast<const uint16_t*>(b_);
  for (size_t i = 0; i < n; i++) {
    c[i] = f32_to_bf16(bf16_to_f32(a[i]) + bf16_to_f32(b[i]));
  }
}

using ReduceFn = void (*)(void*, const void*, const void*, size_t);

ReduceFn sum_fn(int kind) {
  switch (kind) {
    case 0:
      return static_cast<ReduceFn>(&gloo::sum<float>);
    case 1:
      return static_cast<ReduceFn>(&gloo::sum<gloo::float16>);
    case 2:
      return &sum_bf16;
    default:
      throw std::invalid_argument("unknown element kind " + std::to_string(kind));
  }
}

size_t element_size(int kind) {
  if (kind < 0 || kind > 2) {
    throw std::invalid_argument("unknown element kind " + std::to_string(kind));
  }
  return kind == 0 ? 4 : 2;
}

template <typename Opts>
void set_output(Opts& opts, int kind, void* ptr, size_t n) {
  if (element_size(kind) == 4) {
    opts.setOutput(static_cast<float*>(ptr), n);
  } else {
    opts.setOutput(static_cast<uint16_t*>(ptr), n);
  }
}

}  // namespace

extern "C" {

void ftg_free_error(char* err) { std::free(err); }

// Connects `size` ranks; `hostname` is the address this rank listens on for its peers ("" = resolve the
// machine's hostname), `prefix` namespaces the store keys of this group.
char* ftg_group_new(int rank, int size, const char* hostname, const char* prefix,
                    ftg_store_vtable vtable, int64_t timeout_ms, void** out) {
  return guarded([&] {
    auto g = std::make_unique<Group>();
    g->timeout = std::chrono::milliseconds(timeout_ms);
    g->store = std::make_unique<CallbackStore>(vtable);
    gloo::transport::tcp::attr attr;
    if (hostname != nullptr && hostname[0] != '\0') {
      attr.hostname = hostname;
    }
    g->device = gloo::transport::tcp::CreateDevice(attr);
    gloo::rendezvous::PrefixStore prefixed(prefix, *g->store);
    g->context = std::make_shared<gloo::rendezvous::Context>(rank, size);
    g->context->setTimeout(g->timeout);
    g->context->connectFullMesh(prefixed, g->device);
    *out = g.release();
  });
}

void ftg_group_free(void* group) { delete static_cast<Group*>(group); }

// In-place sum over all ranks of `n` elements at `ptr`.
char* ftg_allreduce_sum(void* group, int kind, void* ptr, size_t n) {
  return guarded([&] {
    auto* g = static_cast<Group*>(group);
    gloo::AllreduceOptions opts(g->context);
    set_output(opts, kind, ptr, n);
    opts.setReduceFunction(sum_fn(kind));
    opts.setTag(g->next_tag());
    opts.setTimeout(g->timeout);
    gloo::allreduce(opts);
  });
}

// `output` (n_per_rank * size elements) receives every rank's `input` (n_per_rank elements), rank order.
char* ftg_allgather(void* group, int kind, const void* input, void* output, size_t n_per_rank) {
  return guarded([&] {
    auto* g = static_cast<Group*>(group);
    gloo::AllgatherOptions opts(g->context);
    size_t total = n_per_rank * static_cast<size_t>(g->context->size);
    if (element_size(kind) == 4) {
      opts.setInput(static_cast<float*>(const_cast<void*>(input)), n_per_rank);
      opts.setOutput(static_cast<float*>(output), total);
    } else {
      opts.setInput(static_cast<uint16_t*>(const_cast<void*>(input)), n_per_rank);
      opts.setOutput(static_cast<uint16_t*>(output), total);
    }
    opts.setTag(g->next_tag());
    opts.setTimeout(g->timeout);
    gloo::allgather(opts);
  });
}

// In-place broadcast of `n` elements at `ptr` from `root`.
char* ftg_broadcast(void* group, int kind, void* ptr, size_t n, int root) {
  return guarded([&] {
    auto* g = static_cast<Group*>(group);
    gloo::BroadcastOptions opts(g->context);
    set_output(opts, kind, ptr, n);
    opts.setRoot(root);
    opts.setTag(g->next_tag());
    opts.setTimeout(g->timeout);
    gloo::broadcast(opts);
  });
}

char* ftg_barrier(void* group) {
  return guarded([&] {
    auto* g = static_cast<Group*>(group);
    gloo::BarrierOptions opts(g->context);
    opts.setTag(g->next_tag());
    opts.setTimeout(g->timeout);
    gloo::barrier(opts);
  });
}

}  // extern "C"
