//! `examples/train.c`, compiled with the system C compiler against the built `libringrun.so`,
//! run as 4 workers; one is SIGKILLed mid-run and the other 3 must finish with the fault-free
//! result. Skipped (with a message) when there is no `cc`. Bounded in time.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

const SECRET: &str = "ffi-c-example-secret-0123456789";

/// The cdylib cargo built for this test: `deps/` is refreshed by `cargo test`, the uplifted
/// copy beside it only by `cargo build`; take the newer.
fn library() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap();
    [
        deps.join("libringrun.so"),
        deps.parent().unwrap().join("libringrun.so"),
    ]
    .into_iter()
    .filter_map(|p| Some((p.metadata().ok()?.modified().ok()?, p)))
    .max()
    .map(|(_, p)| p)
    .expect("libringrun.so next to the test binary")
}

/// Compiles `examples/train.c`; `None` when no C compiler is installed.
fn compile() -> Option<PathBuf> {
    if Command::new("cc").arg("--version").output().is_err() {
        eprintln!("SKIPPED: no C compiler (`cc`) on PATH");
        return None;
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let lib = library();
    let out = std::env::temp_dir().join(format!("ringrun-train-c-{}", std::process::id()));
    let status = Command::new("cc")
        .args([
            "-std=c11",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-D_DEFAULT_SOURCE",
            "-I",
        ])
        .arg(dir.join("include"))
        .arg(dir.join("examples/train.c"))
        .arg(&lib)
        .arg(format!("-Wl,-rpath,{}", lib.parent().unwrap().display()))
        .arg("-o")
        .arg(&out)
        .status()
        .expect("run cc");
    assert!(status.success(), "cc failed on examples/train.c");
    Some(out)
}

type Lines = Arc<Mutex<Vec<String>>>;

#[path = "../../tests/common/ports.rs"]
#[allow(unreachable_pub)]
mod ports;
use ports::free_udp_port;

fn spawn(exe: &Path, node: usize, ports: &[u16], run: &str, steps: u64) -> (Child, Lines) {
    let seeds: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let mut child = Command::new(exe)
        .args([&steps.to_string(), "15"])
        .env("RINGRUN_SECRET", SECRET)
        .env("RINGRUN_RUN_ID", run)
        .env("RINGRUN_NODE_ID", node.to_string())
        .env("RINGRUN_MEMBER_PORT", ports[node].to_string())
        .env("RINGRUN_SEEDS", seeds.join(","))
        .env("RINGRUN_INITIAL_SIZE", ports.len().to_string())
        .env("RINGRUN_MIN_SIZE", "2")
        .env("RINGRUN_RESTORE_TIMEOUT_MS", "30000")
        .env("RINGRUN_OP_TIMEOUT_MS", "20000")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the C example");
    let lines: Lines = Arc::default();
    let (out, sink) = (child.stdout.take().unwrap(), lines.clone());
    thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            eprintln!("[node {node}] {line}");
            sink.lock().unwrap().push(line);
        }
    });
    (child, lines)
}

#[test]
fn c_example_survives_a_sigkill() {
    let Some(exe) = compile() else { return };
    let steps = 120;
    let reference = Command::new(&exe)
        .args(["--reference", &steps.to_string()])
        .output()
        .unwrap();
    assert!(reference.status.success());
    let expected = String::from_utf8(reference.stdout)
        .unwrap()
        .trim()
        .to_string();

    let run = format!("ffi-c-{}", std::process::id());
    let ports: Vec<u16> = (0..4).map(|_| free_udp_port()).collect();
    let mut workers: Vec<(Child, Lines)> = (0..4)
        .map(|n| spawn(&exe, n, &ports, &run, steps))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let has = |l: &Lines, prefix: &str| l.lock().unwrap().iter().any(|s| s.starts_with(prefix));
    while !has(&workers[2].1, "step 30 ") {
        assert!(Instant::now() < deadline, "node 2 never reached step 30");
        thread::sleep(Duration::from_millis(5));
    }
    let (mut victim, _) = workers.remove(2);
    victim.kill().unwrap();
    victim.wait().unwrap();

    for (node, (child, lines)) in workers.iter_mut().enumerate() {
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("survivor {node} did not finish in time");
            }
            thread::sleep(Duration::from_millis(20));
        };
        thread::sleep(Duration::from_millis(50)); // let the reader drain
        assert!(status.success(), "survivor {node} exited with {status}");
        let lines = lines.lock().unwrap();
        let last = lines.iter().rev().find(|l| l.starts_with("final "));
        assert_eq!(last, Some(&expected), "survivor {node}");
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("step ") && l.contains(" size 3 ")),
            "survivor {node} never stepped with 3 members"
        );
        let faults = lines.iter().find(|l| l.starts_with("faults ")).unwrap();
        assert!(faults.contains("\"size_after\":3"), "{faults}");
    }
    let _ = std::fs::remove_file(exe);
}
