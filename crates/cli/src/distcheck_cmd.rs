//! `ferrotune dist-selftest --backend nccl|gloo [--nproc N]` (hidden; the collective-check mode of the
//! launcher's worker self-test): exercises every collective of the
//! process group — all_reduce (sum, avg), reduce_scatter (sum, avg), all_gather, broadcast, barrier — for
//! f32, bf16 and f16, on CUDA (nccl) or CPU (gloo), and compares each result with the value computed
//! locally from every rank's input (each rank regenerates all inputs). One line per check on stdout;
//! exit status 1 on any mismatch or error. Without a launcher environment (`RANK` unset) and with
//! `--nproc N > 1` it starts N copies of itself on a free local port and reports their combined result.

use anyhow::{bail, Context};
use ferrotune_dist::{Backend, ProcessGroup, RankEnv, ReduceOp};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tch::{Device, Kind, Tensor};

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Run the collective check on this backend: nccl (CUDA tensors on cuda:LOCAL_RANK) or gloo (CPU).
    #[arg(long)]
    pub backend: Option<String>,
    /// Processes to start when not already running under a launcher (RANK unset).
    #[arg(long, default_value_t = 1, requires = "backend")]
    nproc: usize,
    /// Elements of the large bf16 all_reduce whose time and bus bandwidth are reported (0: skip).
    #[arg(long, default_value_t = 1 << 24, requires = "backend")]
    big: i64,
}

/// The collective check on `backend`; `timeout_secs` bounds the rendezvous and every collective.
pub fn run(args: &CheckArgs, backend_name: &str, timeout_secs: u64) -> anyhow::Result<()> {
    let backend: Backend = backend_name.parse().map_err(anyhow::Error::msg)?;
    if std::env::var_os("RANK").is_none() && args.nproc > 1 {
        return spawn_workers(args, backend_name, timeout_secs);
    }
    let env = RankEnv::from_env()?;
    let failures = worker(&env, backend, args, timeout_secs)?;
    if failures > 0 {
        bail!("rank {}: {failures} check(s) failed", env.rank);
    }
    Ok(())
}

fn spawn_workers(args: &CheckArgs, backend: &str, timeout_secs: u64) -> anyhow::Result<()> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let exe = std::env::current_exe().context("locating the ferrotune binary")?;
    let mut children = Vec::new();
    for rank in 0..args.nproc {
        let mut c = Command::new(&exe);
        c.args(["dist-selftest", "--backend", backend])
            .args(["--timeout", &timeout_secs.to_string()])
            .args(["--big", &args.big.to_string()])
            .env("RANK", rank.to_string())
            .env("WORLD_SIZE", args.nproc.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("LOCAL_WORLD_SIZE", args.nproc.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = c.spawn().context("starting a worker")?;
        let out = child.stdout.take().expect("piped");
        let pump = std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                println!("[rank {rank}] {line}");
            }
        });
        children.push((rank, child, pump));
    }
    let mut failed = Vec::new();
    for (rank, mut child, pump) in children {
        let status = child.wait()?;
        let _ = pump.join();
        if !status.success() {
            failed.push(format!("rank {rank} ({status})"));
        }
    }
    if failed.is_empty() {
        println!(
            "dist-check {backend} world {}: all checks passed",
            args.nproc
        );
        Ok(())
    } else {
        bail!("dist-check {backend} failed on {}", failed.join(", "))
    }
}

/// An input every rank can regenerate: small integers (exact in bf16/f16) that depend on the rank.
fn input(rank: usize, shape: &[i64], kind: Kind, device: Device) -> Tensor {
    let n: i64 = shape.iter().product();
    let v = (Tensor::arange(n, (Kind::Int64, Device::Cpu)).remainder(7) + (rank as i64 + 1))
        .reshape(shape)
        .to_kind(Kind::Float);
    v.to_kind(kind).to_device(device)
}

fn worker(
    env: &RankEnv,
    backend: Backend,
    args: &CheckArgs,
    timeout_secs: u64,
) -> anyhow::Result<usize> {
    let device = match backend {
        Backend::Nccl => Device::Cuda(env.local_rank),
        Backend::Gloo => Device::Cpu,
    };
    let timeout = Duration::from_secs(timeout_secs);
    let start = Instant::now();
    let pg = ProcessGroup::init(env, backend, timeout)?;
    let (w, r) = (env.world_size, env.rank);
    println!(
        "init {} world={w} rank={r} device={device:?} ok ({:.2}s)",
        backend.name(),
        start.elapsed().as_secs_f64()
    );
    let mut failures = 0;
    let mut report = |name: String, got: anyhow::Result<Tensor>, want: &Tensor| {
        let line = match got {
            Ok(g) if g.device() != device => Err(format!("result on {:?}", g.device())),
            Ok(g) if g.size() != want.size() => {
                Err(format!("shape {:?}, expected {:?}", g.size(), want.size()))
            }
            Ok(g) => {
                let err = (g.to_device(Device::Cpu).to_kind(Kind::Double)
                    - want.to_kind(Kind::Double))
                .abs()
                .max()
                .double_value(&[]);
                // Inputs are small integers: sums are exact in every dtype; averages of `w` of them are
                // exact in f32 and within one rounding of a ≤ 3-digit value in bf16 / f16.
                let tol = if want.kind() == Kind::Float {
                    1e-6
                } else {
                    0.07
                };
                if err <= tol {
                    Ok(format!("max abs err {err:.2e}"))
                } else {
                    Err(format!("max abs err {err:.3e} > {tol:e}"))
                }
            }
            Err(e) => Err(format!("{e:#}")),
        };
        match line {
            Ok(m) => println!("check {name} world={w} rank={r} ok ({m})"),
            Err(m) => {
                failures += 1;
                println!("check {name} world={w} rank={r} MISMATCH: {m}");
            }
        }
    };
    let all = |shape: &[i64], kind: Kind| -> Vec<Tensor> {
        (0..w).map(|q| input(q, shape, kind, Device::Cpu)).collect()
    };
    for (kind, kname) in [
        (Kind::Float, "f32"),
        (Kind::BFloat16, "bf16"),
        (Kind::Half, "f16"),
    ] {
        let sum_of = |ts: &[Tensor]| {
            ts.iter()
                .map(|t| t.to_kind(Kind::Double))
                .reduce(|a, b| a + b)
                .expect("w >= 1")
        };
        let shape = [w as i64 * 3, 5];
        for (op, oname) in [(ReduceOp::Sum, "sum"), (ReduceOp::Avg, "avg")] {
            let sum = sum_of(&all(&shape, kind));
            let want = match op {
                ReduceOp::Avg => sum / w as f64,
                ReduceOp::Sum => sum,
            }
            .to_kind(kind);
            let mut t = input(r, &shape, kind, device);
            let got = pg.all_reduce(&mut t, op).map(|_| t).map_err(Into::into);
            report(format!("all_reduce/{oname} {kname}"), got, &want);
            let chunk = want.narrow(0, 3 * r as i64, 3);
            let got = pg
                .reduce_scatter(&input(r, &shape, kind, device), op)
                .map_err(Into::into);
            report(format!("reduce_scatter/{oname} {kname}"), got, &chunk);
        }
        let small = [2i64, 3];
        let want = Tensor::cat(&all(&small, kind), 0);
        let got = pg
            .all_gather(&input(r, &small, kind, device))
            .map_err(Into::into);
        report(format!("all_gather {kname}"), got, &want);
        let root = w - 1;
        let want = input(root, &small, kind, Device::Cpu);
        let mut t = input(r, &small, kind, device);
        let got = pg.broadcast(&mut t, root).map(|_| t).map_err(Into::into);
        report(format!("broadcast/root={root} {kname}"), got, &want);
    }
    let zero = Tensor::zeros([1], (Kind::Float, Device::Cpu));
    let got = pg
        .barrier()
        .map(|_| zero.to_device(device))
        .map_err(Into::into);
    report("barrier".into(), got, &zero);
    // A subgroup (HYBRID_SHARD's kind): the ranks of this rank's parity, bootstrapped through the store.
    let members: Vec<usize> = (r % 2..w).step_by(2).collect();
    let n = members.len();
    let got = pg
        .subgroup(&format!("selftest/parity{}", r % 2), &members)
        .map_err(anyhow::Error::from)
        .and_then(|sub| {
            let mut t = Tensor::full([4], r as f64, (Kind::Float, device));
            sub.all_reduce(&mut t, ReduceOp::Sum)?;
            Ok(t)
        });
    let want = Tensor::full(
        [4],
        members.iter().sum::<usize>() as f64,
        (Kind::Float, Device::Cpu),
    );
    report(format!("subgroup/parity{} size={n}", r % 2), got, &want);
    if args.big > 0 {
        // Timing of a large bf16 all_reduce (ones → world), with NCCL's bus-bandwidth convention.
        let mut t = Tensor::ones([args.big], (Kind::BFloat16, device));
        let _ = pg.all_reduce(&mut t, ReduceOp::Sum);
        let mut t = Tensor::ones([args.big], (Kind::BFloat16, device));
        let t0 = Instant::now();
        let res = pg.all_reduce(&mut t, ReduceOp::Sum);
        let secs = t0.elapsed().as_secs_f64();
        let want = Tensor::full([args.big], w as f64, (Kind::BFloat16, Device::Cpu));
        report(
            format!("all_reduce/sum bf16 n={}", args.big),
            res.map(|_| t).map_err(Into::into),
            &want,
        );
        let bytes = args.big as f64 * 2.0;
        let bus = bytes * 2.0 * (w as f64 - 1.0) / w as f64 / secs / 1e9;
        println!(
            "timing all_reduce bf16 {:.1} MiB world={w} rank={r}: {:.3} ms, bus bandwidth {bus:.1} GB/s",
            bytes / (1 << 20) as f64,
            secs * 1e3
        );
    }
    Ok(failures)
}
