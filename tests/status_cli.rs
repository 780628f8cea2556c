//! `ringrun status` against a live membership group of `ringrun member` processes.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

const RINGRUN: &str = env!("CARGO_BIN_EXE_ringrun");
const SECRET: &str = "status-test-secret-0123456789";

struct Members(Vec<Child>);

impl Drop for Members {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn member(seeds: &[String], host: &str) -> (Child, String) {
    let mut cmd = Command::new(RINGRUN);
    cmd.args(["member", "--duration", "20", "--host", host])
        .env("RINGRUN_SECRET", SECRET);
    if !seeds.is_empty() {
        cmd.args(["--seeds", &seeds.join(",")]);
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening ")
        .expect("member prints its address")
        .to_string();
    (child, addr)
}

fn status(seed: &str, secret: &str, json: bool) -> std::process::Output {
    let mut cmd = Command::new(RINGRUN);
    cmd.args(["status", "--seeds", seed, "--timeout", "1"])
        .env("RINGRUN_SECRET", secret);
    if json {
        cmd.arg("--json");
    }
    cmd.output().unwrap()
}

#[test]
fn status_lists_every_member_and_refuses_a_wrong_secret() {
    let (first, seed) = member(&[], "h0");
    let mut members = Members(vec![first]);
    for h in ["h1", "h2"] {
        members.0.push(member(std::slice::from_ref(&seed), h).0);
    }
    let start = Instant::now();
    let report = loop {
        let out = status(&seed, SECRET, true);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        if out.status.success() && text.matches("\"state\":\"alive\"").count() == 3 {
            break text;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "3 alive members not seen: {text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(report.lines().count(), 1, "one JSON object: {report}");
    for key in [
        "\"epoch\":",
        "\"members\":",
        "\"id\":",
        "\"addr\":",
        "\"incarnation\":",
        "\"rank\":",
    ] {
        assert!(report.contains(key), "{key} missing: {report}");
    }
    for h in ["h0", "h1", "h2"] {
        assert!(report.contains(&format!("\"host\":\"{h}\"")), "{report}");
    }
    let table = String::from_utf8_lossy(&status(&seed, SECRET, false).stdout).to_string();
    assert!(
        table.contains("STATE") && table.matches("alive").count() == 3,
        "{table}"
    );

    let stranger = status(&seed, "not-the-job-secret-at-all", false);
    assert!(!stranger.status.success());
    assert!(String::from_utf8_lossy(&stranger.stderr).contains("no member answered"));
}
