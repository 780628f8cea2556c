//! A slow link named from the links' round trips: four workers in network namespaces of the
//! test's own, then every frame to and from one of them is delayed by 40 ms each way (a
//! forwarder in the hub; this kernel has no `tc netem`). `ringrun status`, asked from inside a
//! namespace, must blame that worker's network within 20 steps, and never a rank; before the
//! delay, nothing may be flagged. Needs root and `ip netns`; elsewhere it prints
//! `SKIP: <reason>` and passes (or fails under `RINGRUN_NETNS_REQUIRE=1`).

mod common;

use std::time::{Duration, Instant};

use common::{
    job::Job,
    netns::{Net, addr, skip_or_fail},
};

/// The newest step a worker printed.
fn last_step(job: &Job, node: usize) -> u64 {
    job.lines(node)
        .iter()
        .rev()
        .find_map(|(_, l)| l.strip_prefix("step ")?.split(' ').next()?.parse().ok())
        .unwrap_or(0)
}

/// `ringrun status --json`, asked of member 0 from its namespace.
fn status(net: &Net, job: &Job) -> Option<serde_json::Value> {
    let seed = format!("{}:7400", addr(0));
    let prefix = ["ip", "netns", "exec", net.members[0].as_str()];
    job.status(&seed, &prefix)
        .inspect_err(|why| eprintln!("{why}"))
        .ok()
}

/// The rank of the member at `ip`.
fn rank_at(report: &serde_json::Value, ip: &str) -> u64 {
    let members = report["members"].as_array().expect("members");
    let m = members
        .iter()
        .find(|m| m["addr"].as_str().is_some_and(|a| a.starts_with(ip)));
    m.and_then(|m| m["rank"].as_u64())
        .unwrap_or_else(|| panic!("no rank for {ip}: {report:#}"))
}

fn stragglers(report: &serde_json::Value) -> Vec<serde_json::Value> {
    report["stragglers"].as_array().cloned().unwrap_or_default()
}

#[test]
fn a_delayed_link_is_blamed_on_its_network_and_not_its_rank() {
    let net = match Net::build(
        &format!("rsl{}", std::process::id() % 100_000),
        &[0, 0, 0, 0],
    ) {
        Ok(n) => n,
        Err(why) => return skip_or_fail(&why),
    };
    let hosts = (0..4).map(|i| (net.members[i].clone(), addr(i))).collect();
    let job = Job::start_in_namespaces("straggle", 100_000, hosts);
    job.wait_line(0, "step 40 ", Duration::from_secs(60));
    // A clean run: asked ten times over three seconds, nothing is flagged.
    let mut clean = serde_json::Value::Null;
    for _ in 0..10 {
        clean = status(&net, &job).expect("status answers");
        assert_eq!(
            stragglers(&clean),
            Vec::<serde_json::Value>::new(),
            "flagged in a clean run: {clean:#}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }

    net.delay_member_link(2, 40).expect("delay member 2's link");
    let delayed_at = last_step(&job, 0);
    let slow = rank_at(&clean, &addr(2));
    // While the windows fill, a single link of rank 2's may be named first; every flag must
    // touch rank 2, none may blame a rank, and its network must be named within 20 steps.
    let deadline = Instant::now() + Duration::from_secs(90);
    let flagged_at = loop {
        assert!(
            Instant::now() < deadline,
            "its network not named within 90 s of the delay"
        );
        let Some(report) = status(&net, &job) else {
            continue;
        };
        let step = last_step(&job, 0);
        let flags = stragglers(&report);
        for f in &flags {
            let ends = [f["rank"].as_u64(), f["blame"]["peer"].as_u64()];
            assert_ne!(f["blame"]["kind"], "rank", "a rank blamed: {report:#}");
            assert!(
                ends.contains(&Some(slow)),
                "a flag not touching rank {slow}: {report:#}"
            );
        }
        if flags.iter().any(|f| f["blame"]["kind"] == "network") {
            eprintln!(
                "step {step} (delayed at {delayed_at}): {:#}",
                report["stragglers"]
            );
            assert_eq!(flags.len(), 1, "its network alone: {report:#}");
            assert_eq!(flags[0]["rank"].as_u64(), Some(slow), "{report:#}");
            break step;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        flagged_at - delayed_at <= 20,
        "named {} steps after the delay",
        flagged_at - delayed_at
    );
}
