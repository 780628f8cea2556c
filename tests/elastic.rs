//! Multi-process elastic training on loopback: `ringrun train-worker` processes under SIGKILL,
//! SIGSTOP and restarts. Every run must end with the model of a fault-free run, bit for bit
//! (the trainer is world-size independent), and lose no committed step. Bounded in time.

mod common;

use std::{
    thread,
    time::{Duration, Instant},
};

use common::job::{Job, assert_no_commit_lost, first_step_after, reference};

#[test]
fn sigkill_one_of_four_then_restart_it() {
    let steps = 160;
    let expected = reference(steps);
    let mut job = Job::start("kill1", 4, steps);
    job.wait_line(2, "step 30 ", Duration::from_secs(30));
    // One host and the default transport: the epoch runs over shared memory.
    let lines = job.lines(2);
    let (_, last) = lines
        .iter()
        .rev()
        .find(|(_, l)| l.starts_with("step "))
        .expect("a step");
    assert!(
        last.contains(" size 4 ") && last.ends_with(" links shm"),
        "{last}"
    );
    let killed = job.kill(2);
    let resumed = loop {
        if let Some(d) = first_step_after(&job, &[0, 1, 3], killed, 3) {
            break d;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(10),
            "survivors never resumed with 3"
        );
        thread::sleep(Duration::from_millis(5));
    };
    eprintln!("kill → first step completed by 3 survivors: {resumed:?}");
    assert!(
        resumed < Duration::from_secs(5),
        "resumed after {resumed:?}"
    );
    let respawned = Instant::now();
    job.spawn(2);
    let back = job.wait_line(2, "step ", Duration::from_secs(30));
    eprintln!(
        "restart → first step done by the restarted worker: {:?}",
        back - respawned
    );
    let finals = job.finish(Duration::from_secs(60));
    assert_eq!(finals.len(), 4);
    for f in &finals {
        assert_eq!(
            f.split(" loss").next(),
            expected.split(" loss").next(),
            "{f} vs {expected}"
        );
    }
    assert_no_commit_lost(&job, &[0, 1, 2, 3]);
    let shm_steps = job
        .lines(0)
        .iter()
        .filter(|(_, l)| l.contains(" links shm"))
        .count();
    assert!(
        shm_steps as u64 >= steps / 2,
        "{shm_steps} of {steps} steps over shm"
    );
    let leaked = common::shm::segments_of_dead_processes();
    assert!(
        leaked.is_empty(),
        "segments of the killed worker left: {leaked:?}"
    );
}

#[test]
fn sigkill_two_of_five_at_once() {
    let steps = 120;
    let expected = reference(steps);
    let mut job = Job::start("kill2", 5, steps);
    job.wait_line(1, "step 25 ", Duration::from_secs(30));
    let killed = job.kill(1);
    job.kill(3);
    let finals = job.finish(Duration::from_secs(60));
    assert_eq!(finals.len(), 3);
    for f in &finals {
        assert_eq!(f.split(" loss").next(), expected.split(" loss").next());
    }
    let resumed = first_step_after(&job, &[0, 2, 4], killed, 3).expect("resumed with 3");
    eprintln!("kill of two → first step completed by 3 survivors: {resumed:?}");
    assert_no_commit_lost(&job, &[0, 2, 4]);
}

#[test]
fn sigstop_one_then_resume_it() {
    let steps = 200;
    let expected = reference(steps);
    let mut job = Job::start("stop1", 4, steps);
    job.wait_line(3, "step 20 ", Duration::from_secs(30));
    job.signal(3, "-STOP");
    let stopped = Instant::now();
    // A stopped process is silent, not dead: SWIM must declare it down and the rest go on.
    let resumed = loop {
        if let Some(d) = first_step_after(&job, &[0, 1, 2], stopped, 3) {
            break d;
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(10),
            "survivors stuck behind a stopped peer"
        );
        thread::sleep(Duration::from_millis(5));
    };
    eprintln!("SIGSTOP → first step completed by 3: {resumed:?}");
    thread::sleep(Duration::from_millis(500));
    job.signal(3, "-CONT");
    let finals = job.finish(Duration::from_secs(60));
    assert_eq!(finals.len(), 4, "the resumed worker finishes too");
    for f in &finals {
        assert_eq!(f.split(" loss").next(), expected.split(" loss").next());
    }
}

#[test]
fn the_whole_group_restarts_from_the_disk_checkpoint() {
    let steps = 100;
    let expected = reference(steps);
    let dir = std::env::temp_dir().join(format!("ringrun-elastic-ckpt-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut job = Job::start_with("disk", 3, steps, Some(dir.clone()));
    job.wait_line(0, "step 45 ", Duration::from_secs(30));
    for node in 0..3 {
        job.kill(node);
    }
    drop(job);
    let mut job = Job::start_with("disk", 3, steps, Some(dir.clone()));
    let first = job.wait_line(0, "step ", Duration::from_secs(30));
    let resumed_at: u64 = job
        .lines(0)
        .iter()
        .find(|(t, _)| *t == first)
        .and_then(|(_, l)| l.split(' ').nth(1)?.parse().ok())
        .unwrap();
    assert!(
        (40..=50).contains(&resumed_at),
        "resumed at step {resumed_at}, not from the checkpoint"
    );
    let finals = job.finish(Duration::from_secs(60));
    for f in &finals {
        assert_eq!(f.split(" loss").next(), expected.split(" loss").next());
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs `n` workers with crash points and checks the survivors end with the reference model.
fn crash_run(name: &str, n: usize, crashes: &[(usize, &str)]) {
    let steps = 80;
    let expected = reference(steps);
    let mut job = Job::start_full(name, n, steps, None, crashes);
    let finals = job.finish(Duration::from_secs(60));
    assert_eq!(finals.len(), n - crashes.len());
    for f in &finals {
        assert_eq!(
            f.split(" loss").next(),
            expected.split(" loss").next(),
            "{f}"
        );
    }
    let survivors: Vec<usize> = (0..n)
        .filter(|i| !crashes.iter().any(|(c, _)| c == i))
        .collect();
    assert_no_commit_lost(&job, &survivors);
}

#[test]
fn crash_mid_allreduce() {
    crash_run("mid-allreduce", 4, &[(2, "allreduce:30")]);
}

#[test]
fn crash_mid_commit() {
    crash_run("mid-commit", 4, &[(1, "commit:30")]);
}

#[test]
fn crash_during_the_view_change_after_a_crash() {
    // Node 1 dies in a commit; node 3 dies entering the epoch that replaces it.
    crash_run("mid-view-change", 5, &[(1, "commit:30"), (3, "sync:2")]);
}

#[test]
fn the_maximum_world_size_holds_and_a_waiting_worker_takes_a_lost_place() {
    let steps = 150;
    let expected = reference(steps);
    let mut job = Job::start_capped("maxsize", 4, 3, steps, 3);
    job.wait_line(0, "step 10 ", Duration::from_secs(30));
    job.spawn(3);
    thread::sleep(Duration::from_millis(800));
    let too_big = job
        .lines(0)
        .iter()
        .any(|(_, l)| l.starts_with("step ") && l.contains(" size 4 "));
    assert!(
        !too_big,
        "a fourth member was admitted over the maximum of 3"
    );
    let killed = job.kill(1);
    let admitted = job.wait_line(3, "step ", Duration::from_secs(30));
    eprintln!(
        "kill → the waiting worker's first step: {:?}",
        admitted - killed
    );
    let finals = job.finish(Duration::from_secs(60));
    assert_eq!(finals.len(), 3);
    for f in &finals {
        assert_eq!(f.split(" loss").next(), expected.split(" loss").next());
    }
}
