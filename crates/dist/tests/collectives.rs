//! Multi-process tests of the Gloo process group: the test binary re-executes itself as 2 or 3 worker
//! processes (role chosen by `FT_DIST_ROLE`) that rendezvous over the TCP store on a free local port.
//! Expected results are computed by libtorch from every rank's input (summing/concatenating the inputs
//! each worker regenerates), not by the collectives under test. Runs with `harness = false`.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ferrotune_dist::{Backend, ProcessGroup, RankEnv, ReduceOp};
use tch::{Kind, Tensor};

const ROLE: &str = "FT_DIST_ROLE";
const KINDS: [Kind; 3] = [Kind::Float, Kind::Half, Kind::BFloat16];

fn main() {
    if let Ok(role) = std::env::var(ROLE) {
        std::process::exit(worker(&role));
    }
    ferrotune_core::testkit::run_cases(&[
        ("collectives_world_2", || collectives(2)),
        ("collectives_world_3", || collectives(3)),
        ("subgroups_of_world_4_node_and_replica", subgroups),
        (
            "rank_that_never_joins_times_out_naming_rank_and_op",
            never_joins,
        ),
        ("stalled_peer_times_out_in_all_reduce", stalled_peer),
    ]);
}

// ---------------------------------------------------------------- parent side

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn spawn(role: &str, rank: usize, world: usize, port: u16) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .env(ROLE, role)
        .env("RANK", rank.to_string())
        .env("WORLD_SIZE", world.to_string())
        .env("LOCAL_RANK", rank.to_string())
        .env("LOCAL_WORLD_SIZE", world.to_string())
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", port.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for a worker (killing it after `limit`), returning (exit code, stdout + stderr, elapsed).
fn finish(mut child: Child, limit: Duration) -> (Option<i32>, String, Duration) {
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            child.kill().ok();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code(), text, start.elapsed())
}

fn collectives(world: usize) {
    let port = free_port();
    let children: Vec<Child> = (0..world)
        .map(|r| spawn("collectives", r, world, port))
        .collect();
    for (rank, child) in children.into_iter().enumerate() {
        let (code, out, _) = finish(child, Duration::from_secs(60));
        assert_eq!(code, Some(0), "rank {rank} of {world} failed:\n{out}");
        assert!(out.contains("all collectives ok"), "rank {rank}:\n{out}");
    }
}

/// World 4 as two "nodes" of two ranks: every rank joins its node group ({0,1} or {2,3}) and its replica
/// group ({0,2} or {1,3}), as HYBRID_SHARD does, and runs every collective check in both.
fn subgroups() {
    let port = free_port();
    let children: Vec<Child> = (0..4).map(|r| spawn("subgroups", r, 4, port)).collect();
    for (rank, child) in children.into_iter().enumerate() {
        let (code, out, _) = finish(child, Duration::from_secs(90));
        assert_eq!(code, Some(0), "rank {rank} of 4 failed:\n{out}");
        assert!(
            out.contains("subgroup collectives ok"),
            "rank {rank}:\n{out}"
        );
    }
}

fn never_joins() {
    // World size 2, but rank 1 is never started: rank 0's init must fail within its 2 s timeout.
    let (code, out, took) = finish(
        spawn("join_timeout", 0, 2, free_port()),
        Duration::from_secs(30),
    );
    assert_eq!(code, Some(3), "{out}");
    assert!(out.contains("rank 0") && out.contains("init"), "{out}");
    assert!(took < Duration::from_secs(15), "took {took:?}: {out}");
}

fn stalled_peer() {
    let port = free_port();
    let r0 = spawn("stall", 0, 2, port);
    let r1 = spawn("stall", 1, 2, port);
    let (code, out, took) = finish(r0, Duration::from_secs(30));
    let (_, out1, _) = finish(r1, Duration::from_secs(30));
    assert_eq!(code, Some(3), "rank 0:\n{out}\nrank 1:\n{out1}");
    assert!(out.contains("rank 0: all_reduce failed"), "{out}");
    assert!(took < Duration::from_secs(15), "took {took:?}: {out}");
}

// ---------------------------------------------------------------- worker side

fn worker(role: &str) -> i32 {
    let env = RankEnv::from_env().expect("worker environment");
    let timeout = match role {
        "collectives" | "subgroups" => Duration::from_secs(30),
        _ => Duration::from_secs(2),
    };
    let pg = match ProcessGroup::init(&env, Backend::Gloo, timeout) {
        Ok(pg) => pg,
        Err(e) => {
            eprintln!("init error: {e}");
            return 3;
        }
    };
    match role {
        "collectives" => {
            for kind in KINDS {
                check_all(&pg, kind);
            }
            println!("rank {}: all collectives ok", pg.rank());
            0
        }
        "subgroups" => {
            let r = pg.rank();
            let node: Vec<usize> = if r < 2 { vec![0, 1] } else { vec![2, 3] };
            let replica = vec![r % 2, r % 2 + 2];
            let node_pg = pg.subgroup(&format!("node{}", r / 2), &node).unwrap();
            let replica_pg = pg.subgroup(&format!("replica{}", r % 2), &replica).unwrap();
            assert_eq!((node_pg.rank(), node_pg.world_size()), (r % 2, 2));
            assert_eq!((replica_pg.rank(), replica_pg.world_size()), (r / 2, 2));
            assert_eq!(replica_pg.global_rank(), r);
            for kind in KINDS {
                check_all(&node_pg, kind);
                check_all(&replica_pg, kind);
            }
            // The parent group still works after its subgroups exist.
            check_all(&pg, Kind::Float);
            let err = pg.subgroup("outsider", &[(r + 1) % 4]).unwrap_err();
            assert!(err.to_string().contains("not among the members"), "{err}");
            println!("rank {r}: subgroup collectives ok");
            0
        }
        "stall" if pg.rank() == 1 => {
            // Joined, but never calls the collective; outlive rank 0's timeout.
            std::thread::sleep(Duration::from_secs(5));
            0
        }
        "stall" => {
            let mut t = Tensor::ones([8], (Kind::Float, tch::Device::Cpu));
            match pg.all_reduce(&mut t, ReduceOp::Sum) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("{e}");
                    3
                }
            }
        }
        other => panic!("unknown role {other}"),
    }
}

/// Rank `r`'s input for the sum tests: (r + 1) * ((i % 7) + 1), exactly representable in every dtype.
fn sum_input(r: usize, shape: &[i64]) -> Tensor {
    let n: i64 = shape.iter().product();
    ((Tensor::arange(n, (Kind::Float, tch::Device::Cpu)).remainder(7) + 1.0) * (r as f64 + 1.0))
        .reshape(shape)
}

/// Rank `r`'s input for the avg test: (i % 5) + 2r - (world - 1), whose mean over ranks is i % 5.
fn avg_input(r: usize, world: usize, n: i64) -> Tensor {
    Tensor::arange(n, (Kind::Float, tch::Device::Cpu)).remainder(5)
        + (2.0 * r as f64 - (world as f64 - 1.0))
}

fn assert_same(what: &str, kind: Kind, got: &Tensor, want_f32: &Tensor) {
    let want = want_f32.to_kind(kind);
    assert_eq!(got.kind(), kind, "{what}: dtype");
    assert_eq!(got.size(), want.size(), "{what}: shape");
    assert!(
        got.equal(&want),
        "{what} ({kind:?}): got {got:?}\nwant {want:?}"
    );
}

fn check_all(pg: &ProcessGroup, kind: Kind) {
    let (rank, world) = (pg.rank(), pg.world_size());
    let ranks = 0..world;

    // all_reduce sum, on an odd length and a 2-d tensor.
    let shape = [5i64, 7];
    let mut t = sum_input(rank, &shape).to_kind(kind);
    pg.all_reduce(&mut t, ReduceOp::Sum).unwrap();
    let want = Tensor::stack(
        &ranks
            .clone()
            .map(|r| sum_input(r, &shape))
            .collect::<Vec<_>>(),
        0,
    )
    .sum_dim_intlist(0, false, Kind::Float);
    assert_same("all_reduce sum", kind, &t, &want);

    // all_reduce avg.
    let mut t = avg_input(rank, world, 33).to_kind(kind);
    pg.all_reduce(&mut t, ReduceOp::Avg).unwrap();
    let want = Tensor::stack(
        &ranks
            .clone()
            .map(|r| avg_input(r, world, 33))
            .collect::<Vec<_>>(),
        0,
    )
    .mean_dim(0, false, Kind::Float);
    assert_same("all_reduce avg", kind, &t, &want);

    // reduce_scatter sum: [2 * world, 3] → this rank's [2, 3] block of the sum.
    let shape = [2 * world as i64, 3];
    let t = sum_input(rank, &shape).to_kind(kind);
    let got = pg.reduce_scatter(&t, ReduceOp::Sum).unwrap();
    let full = Tensor::stack(
        &ranks
            .clone()
            .map(|r| sum_input(r, &shape))
            .collect::<Vec<_>>(),
        0,
    )
    .sum_dim_intlist(0, false, Kind::Float);
    assert_same(
        "reduce_scatter",
        kind,
        &got,
        &full.narrow(0, 2 * rank as i64, 2),
    );

    // all_gather: each rank's [2, 3] → [2 * world, 3] in rank order.
    let gather_input = |r: usize| {
        Tensor::arange(6, (Kind::Float, tch::Device::Cpu)).reshape([2, 3]) + 10.0 * r as f64
    };
    let got = pg.all_gather(&gather_input(rank).to_kind(kind)).unwrap();
    let want = Tensor::cat(&ranks.clone().map(gather_input).collect::<Vec<_>>(), 0);
    assert_same("all_gather", kind, &got, &want);

    // broadcast from the last rank.
    let root = world - 1;
    let bcast_input =
        |r: usize| Tensor::arange(9, (Kind::Float, tch::Device::Cpu)) - 3.0 * r as f64;
    let mut t = bcast_input(rank).to_kind(kind);
    pg.broadcast(&mut t, root).unwrap();
    assert_same("broadcast", kind, &t, &bcast_input(root));

    // barrier: rank 0 arrives 300 ms late; nobody leaves before it arrives.
    if rank == 0 {
        std::thread::sleep(Duration::from_millis(300));
    }
    let start = Instant::now();
    pg.barrier().unwrap();
    if rank != 0 {
        assert!(
            start.elapsed() >= Duration::from_millis(200),
            "barrier returned after {:?}",
            start.elapsed()
        );
    }
}
