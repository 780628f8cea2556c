//! Watching a `ringrun launch` job from a test: its workers' pids and its output lines.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Output, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

/// The output lines a job printed so far (filled by a reader thread).
pub type Lines = Arc<Mutex<Vec<String>>>;

/// The pid of the launcher's child whose environment holds `key_value` (e.g. `RANK=1`), from
/// /proc.
pub fn worker_pid(launcher: u32, key_value: &str) -> Option<u32> {
    let children = std::fs::read_to_string(format!("/proc/{launcher}/task/{launcher}/children"));
    children.ok()?.split_whitespace().find_map(|pid| {
        let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
        env.split(|b| *b == 0)
            .any(|kv| kv == key_value.as_bytes())
            .then(|| pid.parse().ok())?
    })
}

/// Collects `child`'s stdout line by line (echoed to stderr) on a thread.
pub fn read_lines(child: &mut Child) -> Lines {
    let lines = Lines::default();
    let (out, sink) = (child.stdout.take().expect("stdout piped"), lines.clone());
    thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            eprintln!("{line}");
            sink.lock().unwrap().push(line);
        }
    });
    lines
}

/// Waits for the job to exit by `deadline` (killing it and panicking after), then lets the
/// reader thread drain the last lines.
pub fn wait_for_exit(job: &mut Child, deadline: std::time::Instant) -> std::process::ExitStatus {
    let status = loop {
        if let Some(s) = job.try_wait().unwrap() {
            break s;
        }
        if std::time::Instant::now() > deadline {
            let _ = job.kill();
            panic!("the job did not finish in time");
        }
        thread::sleep(std::time::Duration::from_millis(20));
    };
    thread::sleep(std::time::Duration::from_millis(100));
    status
}

/// Runs `cmd` with its output piped and waits up to `within` for it to exit; past that, kills
/// it and panics with what it wrote to stderr.
pub fn output_within(cmd: &mut Command, within: Duration) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + within;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            let out = child.wait_with_output().unwrap();
            panic!(
                "the command did not finish in {within:?}: {}",
                text(&out.stderr)
            );
        }
        thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// Bytes a process wrote, as text.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}
