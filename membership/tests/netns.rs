//! Members in separate network namespaces joined by veth pairs to a bridge; one link is cut
//! and healed.
//!
//! Topology (every name carries the test's pid, so concurrent runs do not collide, and
//! nothing is created in the caller's own namespace):
//!
//! ```text
//!  rrm<pid>-0 (10.213.0.1) --eth0==rrv<pid>-0--+
//!  rrm<pid>-1 (10.213.0.2) --eth0==rrv<pid>-1--+-- br0 in rrhub<pid>
//!  ...                                        |
//! ```
//!
//! Each member namespace holds one member process (this binary re-executed in the member
//! role, see `common`) bound to its 10.213.0.x address; the addresses exist only inside
//! these namespaces. The test waits for convergence, sets the hub end of one member's veth
//! down (detection: every other member reports it `Down` within the configured detection
//! bound), sets it up again (reconvergence: the cut member rejoins under a new identity and
//! everyone sees everyone alive within the convergence bound), and always removes the
//! processes and namespaces, on failure too.
//!
//! Needs root, `ip` (iproute2) and working `ip netns`; otherwise it prints `SKIP: <reason>`
//! and passes, unless `RINGRUN_NETNS_REQUIRE=1`, which turns the skip into a failure.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Cluster, Launch, SECRET};
use ringrun_membership::MembershipConfig;

const MEMBERS: u64 = 4;
/// The member whose link is cut (not the seed).
const VICTIM: u64 = 3;

#[test]
fn member_process() {
    common::member_main();
}

/// Runs `ip args...`; the error carries the command and its stderr.
fn ip(args: &[&str]) -> Result<(), String> {
    let output = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// The namespaces of one run; dropping it kills what runs in them and deletes them.
struct Namespaces {
    hub: String,
    members: Vec<String>,
}

impl Namespaces {
    fn names(&self) -> impl Iterator<Item = &String> {
        self.members.iter().chain(std::iter::once(&self.hub))
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in self.names() {
            // Only processes inside the namespaces this test created (its own members).
            if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-KILL", pid]).status();
                }
            }
        }
        // Deleting a namespace destroys the veth ends in it, and with them their peers.
        for ns in self.names() {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

fn veth(pid: u32, i: u64) -> String {
    format!("rrv{pid}-{i}")
}

fn addr(i: u64) -> String {
    format!("10.213.0.{}", i + 1)
}

/// Creates the namespaces, the bridge and the links. `Err` is a reason to skip.
fn build(pid: u32) -> Result<Namespaces, String> {
    let hub = format!("rrhub{pid}");
    ip(&["netns", "add", &hub])?;
    let mut ns = Namespaces {
        hub,
        members: Vec::new(),
    };
    let hub = ns.hub.clone();
    ip(&["-n", &hub, "link", "set", "lo", "up"])?;
    ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"])?;
    ip(&["-n", &hub, "link", "set", "br0", "up"])?;
    for i in 0..MEMBERS {
        let member = format!("rrm{pid}-{i}");
        ip(&["netns", "add", &member])?;
        ns.members.push(member.clone());
        let hub_end = veth(pid, i);
        ip(&[
            "-n", &hub, "link", "add", &hub_end, "type", "veth", "peer", "name", "eth0", "netns",
            &member,
        ])?;
        ip(&["-n", &hub, "link", "set", &hub_end, "master", "br0"])?;
        ip(&["-n", &hub, "link", "set", &hub_end, "up"])?;
        ip(&["-n", &member, "link", "set", "lo", "up"])?;
        let cidr = format!("{}/24", addr(i));
        ip(&["-n", &member, "addr", "add", &cidr, "dev", "eth0"])?;
        ip(&["-n", &member, "link", "set", "eth0", "up"])?;
    }
    Ok(ns)
}

fn skip_or_fail(reason: &str) {
    if std::env::var("RINGRUN_NETNS_REQUIRE").is_ok_and(|v| v == "1") {
        panic!("RINGRUN_NETNS_REQUIRE=1 but: {reason}");
    }
    println!("SKIP: {reason}");
}

#[test]
fn cut_link_is_detected_and_heal_reconverges() {
    if common::is_member() {
        return;
    }
    let started = Instant::now();
    if effective_uid() != Some(0) {
        return skip_or_fail("not running as root");
    }
    if let Err(err) = ip(&["-V"]) {
        return skip_or_fail(&format!("iproute2 `ip` is not usable: {err}"));
    }
    let pid = std::process::id();
    // Declared before the cluster so that it is dropped after it: processes first.
    let namespaces = match build(pid) {
        Ok(ns) => ns,
        Err(err) => return skip_or_fail(&format!("cannot build the namespaces: {err}")),
    };
    let mut cluster = Cluster::new();
    // A member never outlives the test by more than this, even if the parent vanishes.
    let lifetime_s = 40;
    let mut seed: Option<SocketAddr> = None;
    for i in 0..MEMBERS {
        let launch = Launch {
            prefix: vec![
                "ip".into(),
                "netns".into(),
                "exec".into(),
                namespaces.members[i as usize].clone(),
            ],
            bind: format!("{}:0", addr(i)).parse().unwrap(),
        };
        let seeds: Vec<SocketAddr> = seed.into_iter().collect();
        let bound = cluster
            .spawn_with(i, &seeds, SECRET, &launch, lifetime_s)
            .unwrap_or_else(|| panic!("member {i} did not start in its namespace"));
        seed.get_or_insert(bound);
    }

    let config = MembershipConfig::default();
    let members: BTreeSet<u64> = (0..MEMBERS).collect();
    let survivors: BTreeSet<u64> = members.iter().copied().filter(|&m| m != VICTIM).collect();
    cluster
        .wait(Duration::from_secs(10), |c| c.converged(&members))
        .expect("members in separate namespaces converge through the bridge");
    let rejoin = cluster.sees(0, VICTIM).map_or(0, |v| v.1);

    // Cut: the hub end of the victim's link goes down; its datagrams go nowhere.
    let link = veth(pid, VICTIM);
    ip(&["-n", &namespaces.hub, "link", "set", &link, "down"]).expect("cut the link");
    let cut = Instant::now();
    let bound = config.detection_bound(MEMBERS as usize);
    let detected = cluster
        .wait(bound * 3, |c| {
            survivors
                .iter()
                .all(|&o| c.sees(o, VICTIM).is_some_and(|(up, r)| !up && r >= rejoin))
        })
        .expect("every other member reports the cut member down");
    let detection = detected - cut;
    assert!(
        detection <= bound,
        "detection took {detection:?}, bound {bound:?}"
    );

    // Heal: the link comes back; the cut member learns it was declared down, rejoins under a
    // new identity, and every member sees every other alive again.
    ip(&["-n", &namespaces.hub, "link", "set", &link, "up"]).expect("heal the link");
    let healed = Instant::now();
    let bound_heal = config.convergence_bound(MEMBERS as usize);
    let reconverged = cluster
        .wait(bound_heal * 2, |c| {
            c.converged(&members)
                && survivors
                    .iter()
                    .all(|&o| c.sees(o, VICTIM).is_some_and(|(up, r)| up && r > rejoin))
        })
        .expect("the cut member rejoins and views reconverge after the heal");
    let reconvergence = reconverged - healed;
    assert!(
        reconvergence <= bound_heal,
        "reconvergence took {reconvergence:?}, bound {bound_heal:?}"
    );
    drop(cluster);
    drop(namespaces);
    println!(
        "netns: {MEMBERS} members; cut link detected in {detection:?} (bound {bound:?}); \
         reconverged {reconvergence:?} after heal (bound {bound_heal:?}); total {:?}",
        started.elapsed()
    );
}
