//! Turning ferrotune's dtype and device specs (from `ferrotune-core`) into tch's.

use ferrotune_core::{DType, DeviceSpec};
use tch::{Device, Kind};

/// The tch element kind of a dtype.
pub fn kind_of(d: DType) -> Kind {
    match d {
        DType::F32 => Kind::Float,
        DType::F16 => Kind::Half,
        DType::BF16 => Kind::BFloat16,
    }
}

/// The dtype of a tch kind, if it is a floating-point kind ferrotune computes in.
pub fn dtype_of(k: Kind) -> Option<DType> {
    match k {
        Kind::Float => Some(DType::F32),
        Kind::Half => Some(DType::F16),
        Kind::BFloat16 => Some(DType::BF16),
        _ => None,
    }
}

/// The tch device for a spec; `auto` is CUDA 0 when available, else the CPU.
pub fn resolve_device(spec: DeviceSpec) -> Device {
    match spec {
        DeviceSpec::Auto => Device::cuda_if_available(),
        DeviceSpec::Cpu => Device::Cpu,
        DeviceSpec::Cuda(n) => Device::Cuda(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_and_tensors_take_them() {
        for d in [DType::F32, DType::F16, DType::BF16] {
            assert_eq!(dtype_of(kind_of(d)), Some(d));
            let t = tch::Tensor::ones([3], (kind_of(d), resolve_device(DeviceSpec::Cpu)));
            assert_eq!(t.kind(), kind_of(d));
            assert_eq!(t.numel() * d.size_in_bytes(), 3 * d.size_in_bytes());
            assert_eq!(f64::try_from(t.sum(Kind::Float)).unwrap(), 3.0);
        }
        assert_eq!(dtype_of(Kind::Int64), None);
        assert_eq!(resolve_device(DeviceSpec::Cuda(2)), Device::Cuda(2));
    }
}
