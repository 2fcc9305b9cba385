//! `ferrotune launch`: runs a ferrotune subcommand as a distributed job — N local workers with the
//! torchrun environment, or (with `--hostfile`) one remote launcher per node over ssh — and the hidden
//! `ferrotune dist-selftest`, a worker that checks the environment it was given builds a working Gloo
//! process group (all_reduce, all_gather, broadcast, barrier).

use anyhow::{bail, Context};
use ferrotune_dist::hostfile::{filter_hosts, read_hostfile};
use ferrotune_dist::launch_ssh::{forwarded_env, MultiNodeLaunch};
use ferrotune_dist::launch_supervise::SuperviseOptions;
use ferrotune_dist::{
    launch_signals, Backend, LocalLaunch, NodeLayout, ProcessGroup, RankEnv, ReduceOp,
};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tch::{Device, Kind, Tensor};

#[derive(Debug, clap::Args)]
pub struct LaunchArgs {
    /// Workers on this node (with --hostfile: at most this many slots of each host).
    #[arg(long)]
    nproc_per_node: Option<usize>,
    /// Nodes in the job (with --hostfile: use the first N selected hosts).
    #[arg(long)]
    nnodes: Option<usize>,
    /// This node's index (0 = the node whose rank 0 hosts the rendezvous store).
    #[arg(long, default_value_t = 0, conflicts_with = "hostfile")]
    node_rank: usize,
    /// Address of rank 0's node (default 127.0.0.1 on one node, the first host with --hostfile).
    #[arg(long)]
    master_addr: Option<String>,
    /// Rendezvous port (default: a free port on one node, 29500 on several).
    #[arg(long)]
    master_port: Option<u16>,
    /// DeepSpeed-style hostfile (`host slots=N` per line): start every node over ssh.
    #[arg(long)]
    hostfile: Option<PathBuf>,
    /// Hosts/slots to use, e.g. `worker-0:0,1@worker-1:0` (`@` between hosts, `:` before slots).
    #[arg(long, requires = "hostfile", conflicts_with = "exclude")]
    include: Option<String>,
    /// Hosts/slots to leave out (same syntax as --include).
    #[arg(long, requires = "hostfile")]
    exclude: Option<String>,
    /// The ssh program and options used with --hostfile.
    #[arg(long, default_value = "ssh")]
    ssh: String,
    /// Seconds between SIGTERM and SIGKILL when stopping workers.
    #[arg(long, default_value_t = 10.0)]
    grace_period: f64,
    /// Stop the workers when stdin reaches EOF (set on remote launchers started over ssh).
    #[arg(long, hide = true)]
    exit_with_stdin: bool,
    /// The ferrotune subcommand every worker runs, after `--` (e.g. `-- train CONFIG.toml`).
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<String>,
}

pub fn run(a: LaunchArgs) -> anyhow::Result<()> {
    if !(a.grace_period.is_finite() && a.grace_period >= 0.0) {
        bail!(
            "--grace-period {} is not a number of seconds",
            a.grace_period
        );
    }
    let grace = Duration::from_secs_f64(a.grace_period);
    let program = std::env::current_exe().context("locating the ferrotune binary")?;
    if let Some(hostfile) = &a.hostfile {
        let pool = read_hostfile(hostfile)?;
        let mut hosts = filter_hosts(&pool, a.include.as_deref(), a.exclude.as_deref())?;
        if let Some(n) = a.nnodes {
            if n == 0 || n > hosts.len() {
                bail!(
                    "--nnodes {n}: the hostfile selection has {} host(s)",
                    hosts.len()
                );
            }
            hosts.truncate(n);
        }
        if let Some(n) = a.nproc_per_node {
            hosts.iter_mut().for_each(|h| h.slots.truncate(n));
        }
        let job = MultiNodeLaunch {
            master_addr: a.master_addr.unwrap_or_else(|| hosts[0].host.clone()),
            master_port: a.master_port.unwrap_or(29500),
            hosts,
            ssh: a.ssh.split_whitespace().map(String::from).collect(),
            program,
            cwd: std::env::current_dir().context("reading the working directory")?,
            env: forwarded_env(std::env::vars()),
            args: a.command,
            grace,
        };
        return Ok(job.run()?);
    }
    let nnodes = a.nnodes.unwrap_or(1);
    let master_addr = match (a.master_addr, nnodes) {
        (Some(addr), _) => addr,
        (None, 1) => "127.0.0.1".into(),
        (None, _) => bail!("--nnodes {nnodes} needs --master-addr (the address of node 0)"),
    };
    let master_port = match (a.master_port, nnodes) {
        (Some(p), _) => p,
        (None, 1) => free_port()?,
        (None, _) => 29500,
    };
    let job = LocalLaunch {
        layout: NodeLayout {
            nproc_per_node: a.nproc_per_node.unwrap_or(1),
            nnodes,
            node_rank: a.node_rank,
            master_addr,
            master_port,
        },
        program,
        args: a.command,
        options: SuperviseOptions {
            grace,
            exit_with_stdin: a.exit_with_stdin,
        },
    };
    Ok(job.run()?)
}

fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

#[derive(Debug, clap::Args)]
pub struct DistSelftestArgs {
    /// `--backend nccl|gloo [--nproc N]`: the collective check instead (every collective, f32/bf16/f16).
    #[command(flatten)]
    pub check: crate::distcheck_cmd::CheckArgs,
    /// After the checks, wait (up to 120 s) for SIGINT or SIGTERM and report which one arrived.
    #[arg(long)]
    hang: bool,
    /// This rank exits with --exit-code after the checks.
    #[arg(long)]
    fail_rank: Option<usize>,
    #[arg(long, default_value_t = 3)]
    exit_code: u8,
    /// Seconds any rendezvous or collective may wait.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
}

/// One worker of a self-test job: connects the Gloo group from the environment and checks three
/// collectives against values computed here from the rank numbers alone.
pub fn selftest(a: DistSelftestArgs) -> anyhow::Result<()> {
    if let Some(backend) = a.check.backend.clone() {
        return crate::distcheck_cmd::run(&a.check, &backend, a.timeout);
    }
    let env = RankEnv::from_env()?;
    if a.hang {
        launch_signals::install_counters().context("installing signal counters")?;
    }
    let pg = ProcessGroup::init(&env, Backend::Gloo, Duration::from_secs(a.timeout))?;
    let (r, w) = (env.rank as i64, env.world_size as i64);
    let cpu = (Kind::Float, Device::Cpu);

    let mut t = Tensor::full([3], (r + 1) as f64, cpu);
    pg.all_reduce(&mut t, ReduceOp::Sum)?;
    let sum = Vec::<f32>::try_from(&t)?;
    let want_sum = (w * (w + 1) / 2) as f32;
    check("all_reduce", &sum, &[want_sum; 3])?;

    let gathered = pg.all_gather(&Tensor::from_slice(&[
        10.0 * r as f32,
        10.0 * r as f32 + 1.0,
    ]))?;
    let gathered = Vec::<f32>::try_from(&gathered)?;
    let want: Vec<f32> = (0..w)
        .flat_map(|k| [10.0 * k as f32, 10.0 * k as f32 + 1.0])
        .collect();
    check("all_gather", &gathered, &want)?;

    let mut b = Tensor::arange(3, cpu) + 100.0 * r as f64;
    pg.broadcast(&mut b, env.world_size - 1)?;
    let bcast = Vec::<f32>::try_from(&b)?;
    let want: Vec<f32> = (0..3).map(|i| (100 * (w - 1) + i) as f32).collect();
    check("broadcast", &bcast, &want)?;
    pg.barrier()?;

    let var = |k: &str| std::env::var(k).unwrap_or_else(|_| "-".into());
    println!(
        "selftest rank {}/{} local {}/{} node {} omp {} master {}:{}: all_reduce {sum:?} all_gather \
         {gathered:?} broadcast {bcast:?} ok",
        env.rank,
        env.world_size,
        env.local_rank,
        env.local_world_size,
        var("GROUP_RANK"),
        var("OMP_NUM_THREADS"),
        env.master_addr,
        env.master_port
    );
    if a.fail_rank == Some(env.rank) {
        eprintln!(
            "selftest rank {}: failing on purpose with status {}",
            env.rank, a.exit_code
        );
        std::process::exit(i32::from(a.exit_code));
    }
    if a.hang {
        println!(
            "selftest rank {} pid {} waiting for a signal",
            env.rank,
            std::process::id()
        );
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(120) {
            match launch_signals::received() {
                (i, _) if i > 0 => {
                    println!("selftest rank {} received SIGINT", env.rank);
                    return Ok(());
                }
                (_, t) if t > 0 => {
                    println!("selftest rank {} received SIGTERM", env.rank);
                    std::process::exit(143);
                }
                _ => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        bail!("rank {}: no signal within 120 s", env.rank);
    }
    Ok(())
}

fn check(op: &str, got: &[f32], want: &[f32]) -> anyhow::Result<()> {
    if got != want {
        bail!("{op}: got {got:?}, expected {want:?}");
    }
    Ok(())
}
