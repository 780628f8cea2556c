//! Ranks under `ringrun launch` follow the launcher's `RANK`, not the order workers started in.
//!
//! The job's workers are this test binary (run with `RANKS_TEST_WORKER=1`; `harness = false`,
//! so `main` picks the role). On its first start, the worker launched as `RANK=r` waits
//! `(WORLD_SIZE - 1 - r) × STAGGER` before joining, so the workers join in reverse launch order
//! and seniority (which picks the coordinator) is the opposite of the launch order. Each worker
//! then checks, in every epoch, that the members' launch ranks allgathered in rank order are
//! ascending (the documented rule: ranks are compacted in launch-rank order) and, in the first
//! epoch and whenever the world is whole, that its rank is its `RANK`. The test SIGKILLs the
//! worker launched as `RANK=1`; the survivors must step as ranks 0, 1, 2 (launch ranks 0, 2, 3),
//! and once the launcher's restart of that slot rejoins, every rank is its `RANK` again.
//! Bounded in time.

mod common;

use std::{
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use common::launched::{read_lines, wait_for_exit, worker_pid};
use ringrun_runtime::{Group, GroupConfig, GroupError};

const EXE: &str = env!("CARGO_BIN_EXE_ringrun");
const WORKER: &str = "RANKS_TEST_WORKER";
const WORLD: usize = 4;
/// Delay between two workers' joins on the first start (reverse launch order).
const STAGGER: Duration = Duration::from_millis(300);
/// Steps the job runs at least; it goes on until the world is whole again after the kill.
const STEPS: u64 = 120;
/// A job that never becomes whole again fails here instead of running on.
const MAX_STEPS: u64 = 3000;
const KILLED: usize = 1;
/// The step at which the test kills it.
const KILL_AT: u64 = 20;

fn main() {
    if std::env::var_os(WORKER).is_some() {
        if let Err(e) = worker() {
            println!("worker error: {e}");
            std::process::exit(1);
        }
        return;
    }
    launch_ranks_are_the_launchers_and_come_back_after_a_restart();
    println!("test launch_ranks_are_the_launchers_and_come_back_after_a_restart ... ok");
}

fn env_num<T: std::str::FromStr>(name: &str) -> Result<T, String> {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("{name} is not set to a number"))
}

/// One worker of the job; prints one line per step.
fn worker() -> Result<(), String> {
    let launch: usize = env_num("RANK")?;
    let world: usize = env_num("WORLD_SIZE")?;
    if env_num::<u32>("TORCHELASTIC_RESTART_COUNT")? == 0 {
        thread::sleep(STAGGER * (world - 1 - launch) as u32);
    }
    let config = GroupConfig::from_env().map_err(|e| e.to_string())?;
    let mut g = Group::join(config).map_err(|e| e.to_string())?;
    let mut step = match g.restore().map_err(|e| e.to_string())? {
        Some((s, _)) => s + 1,
        None => {
            println!("first epoch rank {} size {}", g.rank(), g.size());
            if g.size() == world && g.rank() != launch {
                return Err(format!("first epoch: rank {} but RANK={launch}", g.rank()));
            }
            0
        }
    };
    // Whether the world was whole again after the kill (the restarted worker readmitted).
    let mut whole_again = false;
    while step < MAX_STEPS {
        whole_again |= step > KILL_AT && g.size() == world;
        match one_step(&mut g, step, launch, world) {
            Ok(true) if whole_again => {
                g.leave();
                return Ok(());
            }
            Ok(_) => step += 1,
            Err(GroupError::MembershipChanged { .. }) => {
                step = match g.restore().map_err(|e| e.to_string())? {
                    Some((s, _)) => s + 1,
                    None => 0,
                };
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    Err(format!("the world was not whole again by step {MAX_STEPS}"))
}

/// Checks the rank order, prints the step, commits it. `Ok(true)`: past the last step.
fn one_step(g: &mut Group, step: u64, launch: usize, world: usize) -> Result<bool, GroupError> {
    // The job ends past the last step once the world was whole again after the kill, whatever
    // the size then. A commit is not agreed across members: when some finish the last one and
    // leave, the others see a membership change, restore and redo it in a smaller world; that
    // is the end of the job too (a group does not yet record its completion with the state).
    let done = step + 1 >= STEPS;
    let mut order = vec![0i64; g.size()];
    g.allgather(&[launch as i64], &mut order)?;
    println!(
        "step {step} epoch {} size {} rank {} order {order:?}",
        g.epoch(),
        g.size(),
        g.rank()
    );
    let mut expected = order.clone();
    expected.sort();
    let misplaced = g.size() == world && g.rank() != launch;
    if expected != order || order[g.rank()] != launch as i64 || misplaced {
        println!("worker error: ranks out of launch order at step {step}");
        std::process::exit(1);
    }
    thread::sleep(Duration::from_millis(15));
    g.commit(step, step.to_le_bytes().to_vec())?;
    Ok(done)
}

fn launch_ranks_are_the_launchers_and_come_back_after_a_restart() {
    let me = std::env::current_exe().unwrap();
    let mut job = Command::new(EXE)
        .args(["launch", "--np", &WORLD.to_string(), "--max-restarts", "2"])
        .args(["--run-id", &format!("launch-ranks-{}", std::process::id())])
        .arg("--")
        .arg(&me)
        .env(WORKER, "1")
        .env("RINGRUN_SECRET", "launch-ranks-test-secret-0123456789")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let lines = read_lines(&mut job);
    let deadline = Instant::now() + Duration::from_secs(120);
    let seen = |prefix: &str| lines.lock().unwrap().iter().any(|l| l.starts_with(prefix));
    while !seen(&format!("[{KILLED}] step {KILL_AT} ")) {
        if Instant::now() > deadline || job.try_wait().unwrap().is_some() {
            let _ = job.kill();
            panic!("worker {KILLED} never reached step {KILL_AT}");
        }
        thread::sleep(Duration::from_millis(5));
    }
    let victim = worker_pid(job.id(), &format!("RANK={KILLED}")).expect("the worker's pid");
    let killed = Command::new("kill")
        .args(["-KILL", &victim.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = wait_for_exit(&mut job, deadline);
    let lines = lines.lock().unwrap();
    let of = |rank: usize| -> Vec<&str> {
        let prefix = format!("[{rank}] ");
        lines
            .iter()
            .filter_map(|l| l.strip_prefix(&prefix))
            .collect()
    };
    for rank in 0..WORLD {
        let mine = of(rank);
        assert!(
            !mine.iter().any(|l| l.starts_with("worker error")),
            "worker {rank}: {mine:?}"
        );
        assert_eq!(
            mine.iter().find(|l| l.starts_with("first epoch")).copied(),
            Some(format!("first epoch rank {rank} size {WORLD}").as_str()),
            "worker {rank}'s first epoch"
        );
        // The last step ran in the whole world with every rank its RANK (a member may redo it
        // alone after the others left: see `one_step`).
        let last = format!("step {} ", STEPS - 1);
        let whole = format!("size {WORLD} rank {rank} order [0, 1, 2, 3]");
        assert!(
            mine.iter()
                .any(|l| l.starts_with(&last) && l.ends_with(&whole)),
            "worker {rank} never ran step {} as rank {rank} of {WORLD}: {:?}",
            STEPS - 1,
            mine.iter().rev().find(|l| l.starts_with("step "))
        );
    }
    // The survivors, compacted in launch order while the killed slot was out.
    for (launch, rank) in [(0, 0), (2, 1), (3, 2)] {
        let compacted = format!("size 3 rank {rank} order [0, 2, 3]");
        assert!(
            of(launch).iter().any(|l| l.ends_with(&compacted)),
            "worker {launch} never stepped as rank {rank} of 3"
        );
    }
    assert!(status.success(), "ringrun launch exited with {status}");
}
