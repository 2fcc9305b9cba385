//! The `ferrotune` binary allocates through jemalloc with its built-in options (crates/cli/src/cpu_tuning.rs):
//! jemalloc's own statistics report, printed at exit when `MALLOC_CONF` asks for it, must show the binary's
//! `malloc_conf` and page purging off. Without the override (glibc malloc) nothing is printed; with jemalloc
//! but without the options the decay times are jemalloc's defaults (10 s / 0).

#![cfg(all(target_os = "linux", target_env = "gnu"))]

use std::process::Command;

#[test]
fn the_process_allocates_through_jemalloc_without_purging() {
    let out = Command::new(env!("CARGO_BIN_EXE_ferrotune"))
        .args(["env", "--json"])
        .env("MALLOC_CONF", "stats_print:true")
        .output()
        .unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Begin jemalloc statistics"), "{err}");
    assert!(
        err.contains(r#"malloc_conf: "dirty_decay_ms:-1,muzzy_decay_ms:-1""#),
        "{err}"
    );
    assert!(err.contains("opt.dirty_decay_ms: -1"), "{err}");
    assert!(err.contains("opt.muzzy_decay_ms: -1"), "{err}");
}
