// libtorch's current CUDA stream as a raw `cudaStream_t`, for ferrotune-quant's fused kernels
// (src/cuda_dequant.rs): they launch on the stream torch's own work is ordered on. Uses only c10's
// device-agnostic guard interface, so it also builds against a CPU-only libtorch (where it fails).

#include <c10/core/Device.h>
#include <c10/core/Stream.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>

#include <exception>

extern "C" {

// Writes the current stream of CUDA device `device` to *out; returns 0, or 1 on any error.
int ftq_current_cuda_stream(int device, void** out) {
  try {
    const c10::Device dev(c10::DeviceType::CUDA, static_cast<c10::DeviceIndex>(device));
    const c10::Stream s = c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA)->getStream(dev);
    *out = s.native_handle();
    return 0;
  } catch (const std::exception&) {
    return 1;
  }
}

}  // extern "C"
