//! `ferrotune env`: what this installation runs on — versions, accelerators, threads and which libtorch
//! was loaded — as text or `--json`.

use anyhow::Context;
use serde::Serialize;
use std::path::{Path, PathBuf};

#[derive(Debug, clap::Args)]
pub struct EnvArgs {
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct EnvReport {
    ferrotune_version: &'static str,
    torch_version: Option<String>,
    libtorch_path: Option<PathBuf>,
    cuda_available: bool,
    cuda_device_count: usize,
    cuda_devices: Vec<String>,
    cudnn_available: bool,
    cudnn_version: Option<i64>,
    mps_available: bool,
    num_threads: i32,
    num_interop_threads: i32,
}

pub fn run(args: EnvArgs) -> anyhow::Result<()> {
    let report = collect();
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).context("serializing the report")?
        );
    } else {
        let opt = |s: &Option<String>| s.clone().unwrap_or_else(|| "unknown".into());
        println!("ferrotune      {}", report.ferrotune_version);
        println!("torch          {}", opt(&report.torch_version));
        println!(
            "libtorch       {}",
            opt(&report
                .libtorch_path
                .as_ref()
                .map(|p| p.display().to_string()))
        );
        println!(
            "cuda           {} ({} device(s))",
            report.cuda_available, report.cuda_device_count
        );
        for (i, name) in report.cuda_devices.iter().enumerate() {
            println!("  cuda:{i}       {name}");
        }
        println!(
            "cudnn          {} {}",
            report.cudnn_available,
            report
                .cudnn_version
                .map(|v| v.to_string())
                .unwrap_or_default()
        );
        println!("mps            {}", report.mps_available);
        println!(
            "threads        {} (interop {})",
            report.num_threads, report.num_interop_threads
        );
    }
    Ok(())
}

fn collect() -> EnvReport {
    let cuda_available = tch::Cuda::is_available();
    let count = if cuda_available {
        tch::Cuda::device_count().max(0) as usize
    } else {
        0
    };
    let cudnn_available = cuda_available && tch::Cuda::cudnn_is_available();
    let libtorch_path = loaded_libtorch();
    EnvReport {
        ferrotune_version: ferrotune_core::VERSION,
        torch_version: libtorch_path.as_deref().and_then(torch_version),
        libtorch_path,
        cuda_available,
        cuda_device_count: count,
        cuda_devices: ferrotune_dist::cuda::device_names(count),
        cudnn_available,
        cudnn_version: cudnn_available.then(tch::utils::version_cudnn),
        mps_available: tch::utils::has_mps(),
        num_threads: tch::get_num_threads(),
        num_interop_threads: tch::utils::get_num_interop_threads(),
    }
}

/// The libtorch_cpu.so mapped into this process, read from /proc/self/maps (the file the dynamic loader
/// actually chose, whatever rpath or LD_LIBRARY_PATH said).
fn loaded_libtorch() -> Option<PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| {
            Path::new(p)
                .file_name()
                .is_some_and(|n| n == "libtorch_cpu.so")
        })
        .map(PathBuf::from)
}

/// The version of the torch install a `.../torch/lib/libtorch_cpu.so` belongs to, from `torch/version.py`
/// (`__version__ = '2.11.0+cu130'`) next to its lib dir.
fn torch_version(lib: &Path) -> Option<String> {
    let version_py = lib.parent()?.parent()?.join("version.py");
    let text = std::fs::read_to_string(version_py).ok()?;
    parse_version_py(&text)
}

fn parse_version_py(text: &str) -> Option<String> {
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("__version__"))?;
    let v = line.split_once('=')?.1.trim();
    let v = v
        .split(':')
        .next_back()?
        .trim()
        .trim_matches(|c| c == '\'' || c == '"');
    Some(v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_py_forms() {
        assert_eq!(
            parse_version_py("__version__ = '2.11.0+cu130'\ngit_version = 'x'").as_deref(),
            Some("2.11.0+cu130")
        );
        assert_eq!(
            parse_version_py("__version__: str = \"2.11.0\"").as_deref(),
            Some("2.11.0")
        );
        assert_eq!(parse_version_py("nothing here"), None);
    }

    #[test]
    fn finds_the_loaded_libtorch_and_its_version() {
        // Touch libtorch so that it is certainly loaded, then find it the way `ferrotune env` does.
        let _ = tch::Tensor::zeros([1], (tch::Kind::Float, tch::Device::Cpu));
        let lib = loaded_libtorch().expect("libtorch_cpu.so is mapped");
        let v = torch_version(&lib).expect("version.py next to torch/lib");
        assert!(v.starts_with("2.11.0"), "{v}");
    }
}
