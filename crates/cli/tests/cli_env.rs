//! End-to-end checks of the `ferrotune` binary's contract: `env` works without LD_LIBRARY_PATH (rpath) and
//! reports torch 2.11.0, usage errors exit 2 with clap's message.

use std::process::Command;

fn ferrotune() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ferrotune"));
    c.env_remove("LD_LIBRARY_PATH");
    c
}

#[test]
fn env_json_reports_torch_without_ld_library_path() {
    let out = ferrotune().args(["env", "--json"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let torch = v["torch_version"].as_str().unwrap();
    assert!(torch.starts_with("2.11.0"), "{torch}");
    assert_eq!(v["ferrotune_version"], env!("CARGO_PKG_VERSION"));
    assert!(v["num_threads"].as_i64().unwrap() >= 1);
    assert!(v["libtorch_path"]
        .as_str()
        .unwrap()
        .ends_with("libtorch_cpu.so"));
    let n = v["cuda_device_count"].as_u64().unwrap();
    assert_eq!(v["cuda_devices"].as_array().unwrap().len() as u64, n);
    assert_eq!(v["cuda_available"].as_bool().unwrap(), n > 0);
}

#[test]
fn usage_errors_exit_2_and_help_lists_subcommands() {
    let out = ferrotune().arg("no-such-command").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unrecognized subcommand"));
    let out = ferrotune()
        .args(["env", "--no-such-flag"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = ferrotune().arg("--help").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("env"));
}
