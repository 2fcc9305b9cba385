// C ABI over libtorch's CUDA caching-allocator statistics for ferrotune-train (src/gpu_memory.rs is the
// Rust side): what `torch.cuda.max_memory_allocated()` / `max_memory_reserved()` report, which tch does
// not expose. Header-only use of c10's DeviceAllocator interface, so it also builds against a CPU-only
// libtorch (where it answers "unavailable").

#include <c10/core/CachingDeviceAllocator.h>

#include <cstdint>
#include <exception>

extern "C" {

// Fills out[0..4] with allocated bytes (current, peak) and reserved bytes (current, peak) of CUDA
// device `device` since the last reset, then resets the peaks when `reset_peaks` is non-zero. Returns 0
// on success, 1 when libtorch has no initialized CUDA allocator, 2 on any other error.
int ftt_cuda_alloc_stats(int device, int64_t* out, int reset_peaks) {
  try {
    c10::DeviceAllocator* a = c10::getDeviceAllocator(c10::DeviceType::CUDA);
    if (a == nullptr || !a->initialized()) return 1;
    const auto idx = static_cast<c10::DeviceIndex>(device);
    const auto s = a->getDeviceStats(idx);
    const auto all = static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE);
    out[0] = s.allocated_bytes[all].current;
    out[1] = s.allocated_bytes[all].peak;
    out[2] = s.reserved_bytes[all].current;
    out[3] = s.reserved_bytes[all].peak;
    if (reset_peaks != 0) a->resetPeakStats(idx);
    return 0;
  } catch (const std::exception&) {
    return 2;
  }
}

}  // extern "C"
