//! Elastic training across network namespaces: a member's link cut (silent loss, not a crash)
//! and a 2 + 2 partition. Needs root and `ip netns`; elsewhere each test prints `SKIP: <reason>`
//! and passes (or fails under `RINGRUN_NETNS_REQUIRE=1`).

mod common;

use std::{
    thread,
    time::{Duration, Instant},
};

use common::{
    job::{Job, first_step_after, reference},
    netns::{Net, addr, skip_or_fail},
};

fn hosts(net: &Net) -> Vec<(String, String)> {
    (0..net.members.len())
        .map(|i| (net.members[i].clone(), addr(i)))
        .collect()
}

fn steps_between(job: &Job, nodes: &[usize], from: Instant, to: Instant) -> usize {
    nodes
        .iter()
        .flat_map(|n| job.lines(*n))
        .filter(|(t, l)| *t > from && *t < to && l.starts_with("step "))
        .count()
}

fn same_model(finals: &[String], expected: &str) {
    for f in finals {
        assert_eq!(
            f.split(" loss").next(),
            expected.split(" loss").next(),
            "{f}"
        );
    }
}

#[test]
fn a_cut_link_is_a_silent_loss_and_the_member_rejoins_after_healing() {
    let net = match Net::build(
        &format!("rrc{}", std::process::id() % 100_000),
        &[0, 0, 0, 0],
    ) {
        Ok(n) => n,
        Err(why) => return skip_or_fail(&why),
    };
    let steps = 300;
    let expected = reference(steps);
    let mut job = Job::start_in_namespaces("cut", steps, hosts(&net));
    job.wait_line(3, "step 20 ", Duration::from_secs(30));
    net.set_member_link(3, false).unwrap();
    let cut = Instant::now();
    let resumed = loop {
        if let Some(d) = first_step_after(&job, &[0, 1, 2], cut, 3) {
            break d;
        }
        assert!(
            cut.elapsed() < Duration::from_secs(15),
            "survivors never resumed"
        );
        thread::sleep(Duration::from_millis(5));
    };
    eprintln!("link cut → first step completed by the 3 others: {resumed:?}");
    assert!(resumed < Duration::from_secs(5), "{resumed:?}");
    thread::sleep(Duration::from_millis(1000));
    net.set_member_link(3, true).unwrap();
    let finals = job.finish(Duration::from_secs(90));
    assert_eq!(finals.len(), 4, "the cut member rejoined and finished");
    same_model(&finals, &expected);
}

#[test]
fn a_two_two_partition_trains_on_neither_side_then_heals() {
    let net = match Net::build(
        &format!("rrp{}", std::process::id() % 100_000),
        &[0, 0, 1, 1],
    ) {
        Ok(n) => n,
        Err(why) => return skip_or_fail(&why),
    };
    let job = Job::start_in_namespaces("split", 250, hosts(&net));
    two_two_partition(&net, job, 250, "tcp");
}

/// The same split between two hosts of two members each: shared memory in each host, TCP
/// across, the hierarchical allreduce; the cut link is the one between the hosts.
#[test]
fn a_cut_between_two_hosts_of_two_trains_on_neither_side_then_heals() {
    let net = match Net::build(&format!("rrq{}", std::process::id() % 100_000), &[0, 1]) {
        Ok(n) => n,
        Err(why) => return skip_or_fail(&why),
    };
    let paired = [0, 0, 1, 1]
        .map(|h| (net.members[h].clone(), addr(h)))
        .to_vec();
    let job = Job::start_in_namespaces("hosts", 250, paired);
    two_two_partition(&net, job, 250, "hierarchical");
}

/// Cuts the link between the two halves of a 4-member job for 4 s once it trains with `links`:
/// no side may train meanwhile, and after healing all four finish with the reference model.
fn two_two_partition(net: &Net, mut job: Job, steps: u64, links: &str) {
    let expected = reference(steps);
    job.wait_line(0, "step 20 ", Duration::from_secs(30));
    let lines = job.lines(0);
    let (_, last) = lines
        .iter()
        .rev()
        .find(|(_, l)| l.starts_with("step "))
        .expect("a step");
    assert!(last.ends_with(&format!(" links {links}")), "{last}");
    net.set_bridge_link(false).unwrap();
    let cut = Instant::now();
    thread::sleep(Duration::from_secs(4));
    let healed = Instant::now();
    net.set_bridge_link(true).unwrap();
    // No side holds a majority of the 4-member epoch: nobody may complete a step meanwhile
    // (the step in flight at the cut may finish within a few ms).
    let during = steps_between(
        &job,
        &[0, 1, 2, 3],
        cut + Duration::from_millis(200),
        healed,
    );
    assert_eq!(during, 0, "a minority side trained during the partition");
    let finals = job.finish(Duration::from_secs(90));
    assert_eq!(finals.len(), 4);
    same_model(&finals, &expected);
    let back = first_step_after(&job, &[0, 1, 2, 3], healed, 4).expect("resumed with 4");
    eprintln!("partition healed → first step with all 4: {back:?}");
}
