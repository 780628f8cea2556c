//! Two "hosts" (network namespaces), each running `ringrun launch --np 2`, found through Slurm's
//! environment (the node list is the seed list); one worker is SIGKILLed, its launcher restarts
//! it, and all four finish with the reference model. Needs root and `ip netns`; elsewhere it
//! prints `SKIP: <reason>` and passes (or fails under `RINGRUN_NETNS_REQUIRE=1`).

mod common;

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::mpsc::channel,
    time::{Duration, Instant},
};

use common::{
    job::{EXE, reference},
    netns::{Net, skip_or_fail},
};

const SECRET: &str = "multihost-test-secret-0123456789";

fn launcher(net: &Net, host: usize, steps: u64) -> Child {
    Command::new("ip")
        .args([
            "netns",
            "exec",
            &net.members[host],
            EXE,
            "launch",
            "--np",
            "2",
        ])
        .args([
            "--bind",
            &common::netns::addr(host),
            "--max-restarts",
            "2",
            "--",
        ])
        .args([
            EXE,
            "train-worker",
            "--steps",
            &steps.to_string(),
            "--step-ms",
            "10",
        ])
        .env("RINGRUN_SECRET", SECRET)
        .env("SLURM_JOB_NODELIST", "10.214.0.[1-2]")
        .env("SLURM_NODEID", host.to_string())
        .env("SLURM_JOB_ID", "4242")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ip netns exec ringrun launch")
}

/// The pids of `train-worker` processes inside namespace `ns`.
fn workers_in(ns: &str) -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "pids", ns])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter(|pid| {
            // argv[1] is the subcommand: the launcher's own command line names train-worker too.
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.split(|b| *b == 0).nth(1) == Some(b"train-worker".as_slice()))
        })
        .map(str::to_string)
        .collect()
}

#[test]
fn two_hosts_from_slurm_survive_a_killed_worker() {
    let net = match Net::build(&format!("rrh{}", std::process::id() % 100_000), &[0, 0]) {
        Ok(n) => n,
        Err(why) => return skip_or_fail(&why),
    };
    let steps = 300;
    let expected = reference(steps);
    let expected = expected.split(" loss").next().unwrap().to_string();
    let (tx, rx) = channel();
    let mut hosts: Vec<Child> = (0..2).map(|h| launcher(&net, h, steps)).collect();
    for (h, child) in hosts.iter_mut().enumerate() {
        for (err, pipe) in [
            (
                false,
                child
                    .stdout
                    .take()
                    .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
            ),
            (
                true,
                child
                    .stderr
                    .take()
                    .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
            ),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for l in BufReader::new(pipe.unwrap()).lines().map_while(Result::ok) {
                    eprintln!("[host {h}{}] {l}", if err { " err" } else { "" });
                    let _ = tx.send((h, err, l));
                }
            });
        }
    }
    drop(tx);
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut lines = Vec::new();
    while !lines
        .iter()
        .any(|(_, _, l): &(usize, bool, String)| l.contains("step 40 ") && l.contains("size 4"))
    {
        lines.push(
            rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .expect("training with 4"),
        );
    }
    let victim = workers_in(&net.members[1])
        .into_iter()
        .next()
        .expect("a worker on host 1");
    assert!(
        Command::new("kill")
            .args(["-KILL", &victim])
            .status()
            .unwrap()
            .success()
    );
    while let Ok(l) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        lines.push(l);
    }
    for (h, child) in hosts.iter_mut().enumerate() {
        let status = child.wait().unwrap();
        assert!(status.success(), "host {h}'s launcher: {status}");
    }
    let finals: Vec<&String> = lines
        .iter()
        .filter(|(_, e, l)| !e && l.contains("] final "))
        .map(|(_, _, l)| l)
        .collect();
    assert_eq!(
        finals.len(),
        4,
        "every worker finished, the restarted one too"
    );
    for f in finals {
        assert!(f.contains(&expected), "{f} vs {expected}");
    }
    assert!(
        lines
            .iter()
            .any(|(h, e, l)| *h == 1 && *e && l.contains("restarting worker"))
    );
    // Two hosts of two (and, after the kill, of two and one): the hierarchical layout, shared
    // memory in each host and TCP across, in every epoch (the trainer's small gradients take
    // recursive doubling over those links; the hierarchy's own stages are tested in
    // runtime/tests/group.rs).
    let step_lines: Vec<&String> = lines
        .iter()
        .filter(|(_, e, l)| !e && l.contains("] step "))
        .map(|(_, _, l)| l)
        .collect();
    assert!(
        step_lines.len() as u64 >= 3 * steps,
        "{} step lines",
        step_lines.len()
    );
    for l in step_lines {
        assert!(l.ends_with(" links hierarchical"), "{l}");
    }
}
