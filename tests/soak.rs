//! Garbage at every port of a live job: three workers train while one thread sends random
//! datagrams to every UDP socket they hold and another random bytes over fresh connections to
//! every TCP socket they listen on, for `RINGRUN_SOAK_SECS` seconds (10 unless set; the
//! documented soak is 60); halfway, a worker is killed and restarted. Training goes on, every
//! worker ends with the reference model, and the workers' reports count the datagrams they
//! dropped.

mod common;

use std::{
    collections::HashSet,
    fs,
    io::Write,
    net::{SocketAddr, TcpStream, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use common::job::{Job, first_step_after, reference};

/// The ports of the sockets process `pid` holds: UDP (bound) and TCP (listening).
fn ports_of(pid: u32) -> (Vec<u16>, Vec<u16>) {
    let inodes: HashSet<u64> = fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("the worker's descriptors")
        .flatten()
        .filter_map(|e| fs::read_link(e.path()).ok())
        .filter_map(|l| {
            l.to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect();
    // /proc/net/{udp,tcp}: "sl local_address rem_address st ... inode" (inode is field 9).
    let table = |file: &str, listening_only: bool| -> Vec<u16> {
        let text = fs::read_to_string(format!("/proc/{pid}/net/{file}")).unwrap_or_default();
        text.lines()
            .skip(1)
            .filter_map(|line| {
                let f: Vec<&str> = line.split_whitespace().collect();
                let port = u16::from_str_radix(f.get(1)?.rsplit(':').next()?, 16).ok()?;
                let inode: u64 = f.get(9)?.parse().ok()?;
                let listening = *f.get(3)? == "0A";
                (inodes.contains(&inode) && (listening || !listening_only)).then_some(port)
            })
            .collect()
    };
    let udp = [table("udp", false), table("udp6", false)].concat();
    let tcp = [table("tcp", true), table("tcp6", true)].concat();
    (udp, tcp)
}

/// `len` pseudo-random bytes (xorshift; the test needs variety, not quality).
fn garbage(state: &mut u64, max: usize) -> Vec<u8> {
    let mut next = || {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    };
    let len = (next() as usize) % max;
    (0..len).map(|_| next() as u8).collect()
}

fn udp_flood(ports: Vec<u16>, stop: Arc<AtomicBool>, sent: Arc<AtomicU64>) {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut seed = 0x9e37_79b9_7f4a_7c15;
    while !stop.load(Ordering::Relaxed) {
        for port in &ports {
            if socket
                .send_to(&garbage(&mut seed, 1400), ("127.0.0.1", *port))
                .is_ok()
            {
                sent.fetch_add(1, Ordering::Relaxed);
            }
        }
        thread::sleep(Duration::from_millis(2));
    }
}

fn tcp_flood(ports: Vec<u16>, stop: Arc<AtomicBool>, sent: Arc<AtomicU64>) {
    let mut seed = 0x2545_f491_4f6c_dd1d;
    while !stop.load(Ordering::Relaxed) {
        for port in &ports {
            let addr = SocketAddr::from(([127, 0, 0, 1], *port));
            if let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(100)) {
                let _ = s.set_write_timeout(Some(Duration::from_millis(100)));
                if s.write_all(&garbage(&mut seed, 64 * 1024)).is_ok() {
                    sent.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// The sum of the dropped datagrams the live workers report, as worker 0 sees the job.
fn dropped(job: &Job) -> u64 {
    let seed = format!("127.0.0.1:{}", job.process(0).1);
    let report = job.status(&seed, &[]).unwrap_or_else(|why| panic!("{why}"));
    let members = report["members"].as_array().expect("members").clone();
    members
        .iter()
        .filter_map(|m| {
            Some(m["dropped"]["membership"].as_u64()? + m["dropped"]["control"].as_u64()?)
        })
        .sum()
}

#[test]
fn garbage_at_every_port_loses_no_state() {
    let secs: u64 = std::env::var("RINGRUN_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    // 15 ms a step: the job outlives the flood by about ten seconds.
    let steps = (secs + 10) * 1000 / 15;
    let expected = reference(steps);
    let mut job = Job::start("soak", 3, steps);
    job.wait_line(0, "step 10 ", Duration::from_secs(30));
    let (mut udp, mut tcp) = (Vec::new(), Vec::new());
    for node in 0..3 {
        let (u, t) = ports_of(job.process(node).0);
        udp.extend(u);
        tcp.extend(t);
    }
    eprintln!("UDP ports {udp:?}, TCP ports {tcp:?}");
    assert!(
        udp.len() >= 6 && tcp.len() >= 3,
        "each worker's membership and control sockets and listener"
    );
    let stop = Arc::new(AtomicBool::new(false));
    let (datagrams, connections) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let flooders = [
        thread::spawn({
            let (stop, sent) = (stop.clone(), datagrams.clone());
            move || udp_flood(udp, stop, sent)
        }),
        thread::spawn({
            let (stop, sent) = (stop.clone(), connections.clone());
            move || tcp_flood(tcp, stop, sent)
        }),
    ];
    let started = Instant::now();
    // Halfway, a worker is killed: the survivors re-form under the flood, with their listeners'
    // backlogs full of strangers' connections, and the worker, restarted, rejoins.
    thread::sleep(Duration::from_secs(secs) / 2);
    let killed = job.kill(2);
    let resumed = loop {
        if let Some(d) = first_step_after(&job, &[0, 1], killed, 2) {
            break d;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "the survivors did not resume"
        );
        thread::sleep(Duration::from_millis(5));
    };
    job.spawn(2);
    eprintln!("survivors resumed {resumed:?} after the kill");
    thread::sleep((started + Duration::from_secs(secs)).saturating_duration_since(Instant::now()));
    let counted = dropped(&job);
    stop.store(true, Ordering::Relaxed);
    for f in flooders {
        f.join().unwrap();
    }
    let (datagrams, connections) = (
        datagrams.load(Ordering::Relaxed),
        connections.load(Ordering::Relaxed),
    );
    eprintln!(
        "{:.1} s: {datagrams} datagrams and {connections} connections of garbage sent; the workers \
         counted {counted} datagrams dropped",
        started.elapsed().as_secs_f64()
    );
    assert!(
        counted * 2 >= datagrams,
        "fewer than half the garbage datagrams counted as dropped: {counted} of {datagrams}"
    );
    let finals = job.finish(Duration::from_secs(120));
    for (node, f) in finals.iter().enumerate() {
        assert_eq!(f, &expected, "node {node} ended with another model");
    }
}
