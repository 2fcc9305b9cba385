//! Facts about the local CUDA devices through the driver API (cudarc, loaded at run time), for
//! `ferrotune env` and for choosing `LOCAL_RANK` devices. libtorch does not expose device names.

/// Names of the visible CUDA devices, in ordinal order. Empty when no driver or device is present; this
/// never fails or panics on a machine without CUDA.
pub fn device_names(count: usize) -> Vec<String> {
    if count == 0 {
        return Vec::new();
    }
    // cudarc panics when the driver library cannot be loaded; a CPU-only machine must not abort.
    std::panic::catch_unwind(|| {
        use cudarc::driver::result;
        if result::init().is_err() {
            return Vec::new();
        }
        (0..count)
            .map(|i| {
                result::device::get(i as i32)
                    .and_then(result::device::get_name)
                    .unwrap_or_else(|e| format!("<unknown: {e}>"))
            })
            .collect()
    })
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #[test]
    fn no_devices_means_no_names() {
        assert!(super::device_names(0).is_empty());
        // Whatever the machine, asking never panics, and gives one name per device or none at all.
        let n = tch::Cuda::device_count() as usize;
        let names = super::device_names(n);
        assert!(names.is_empty() || names.len() == n);
    }
}
