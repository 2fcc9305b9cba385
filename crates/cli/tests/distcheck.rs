//! `ferrotune dist-selftest --backend ...`, the collective check the GPU script runs (tools/gpu/check.sh):
//! on gloo with 3 processes every collective × dtype, and a subgroup all_reduce, passes on every rank (the expected values are
//! recomputed by libtorch in each worker from every rank's input); on nccl without CUDA it fails at once
//! with an error that names the rank, the backend and the device it needed.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_ferrotune");

#[test]
fn gloo_world_3_passes_every_collective_dtype_and_subgroup() {
    let out = Command::new(BIN)
        .args(["dist-selftest", "--backend", "gloo", "--nproc", "3"])
        .args(["--timeout", "30", "--big", "0"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Per rank and dtype: all_reduce + reduce_scatter for sum and avg, all_gather, broadcast (6), × 3
    // dtypes, plus the barrier and the parity subgroup ({0, 2} and {1}).
    for rank in 0..3 {
        let ok = stdout
            .lines()
            .filter(|l| l.starts_with(&format!("[rank {rank}] check ")) && l.contains(" ok "))
            .count();
        assert_eq!(ok, 6 * 3 + 2, "rank {rank}:\n{stdout}");
    }
    assert!(stdout.contains("check subgroup/parity0 size=2 world=3 rank=2 ok"));
    assert!(!stdout.contains("MISMATCH"), "{stdout}");
    assert!(stdout.contains("dist-check gloo world 3: all checks passed"));
}

#[test]
fn nccl_without_cuda_fails_clearly() {
    if tch::Cuda::is_available() {
        return; // the GPU script covers the CUDA side
    }
    let out = Command::new(BIN)
        .args(["dist-selftest", "--backend", "nccl", "--timeout", "10"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("rank 0") && stderr.contains("nccl") && stderr.contains("cuda:0"),
        "{stderr}"
    );
}
