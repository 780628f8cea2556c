//! `ringrun launch` in place of `torchrun` and `horovodrun`: their command lines as their
//! documentation shows them (one host, several hosts on loopback, elastic `MIN:MAX`, a module,
//! `--no-python`, underscore spellings, `=` forms), each run on loopback with a tiny Python
//! worker that prints its environment and arguments. Every worker's `RANK`, `LOCAL_RANK`,
//! `WORLD_SIZE`, `MASTER_ADDR`, `MASTER_PORT` and `TORCHELASTIC_*` are checked, and that the
//! program got its own arguments untouched. Then the end of a failed job (the root-cause
//! summary and the exit codes), and the console filters. Last, two "hosts" in network
//! namespaces started with torchrun's multi-node form (`--nnodes 2 --node-rank K
//! --rdzv-endpoint HOST:PORT`) form one job (needs root and `ip netns`; elsewhere it prints
//! `SKIP: <reason>` and passes, or fails under `RINGRUN_NETNS_REQUIRE=1`). Every run is
//! bounded in time.

mod common;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use common::{
    launched::text,
    netns::{Net, addr, skip_or_fail},
    ports::free_udp_port,
};

const EXE: &str = env!("CARGO_BIN_EXE_ringrun");
const SECRET: &str = "torchrun-compat-test-secret-0123";

/// The worker: one JSON line with its arguments and the variables torchrun sets; exits with
/// `--fail-rank R`'s code 3 on rank R.
const WORKER: &str = r#"
import json, os, sys
keys = ["RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR",
        "MASTER_PORT", "TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT",
        "TORCHELASTIC_MAX_RESTARTS", "RINGRUN_MIN_SIZE", "RINGRUN_MAX_SIZE", "VIA",
        "OMP_NUM_THREADS"]
print("WORKER " + json.dumps({"argv": sys.argv[1:], "env": {k: os.environ.get(k) for k in keys}}))
sys.stdout.flush()
if "--fail-rank" in sys.argv and os.environ["RANK"] == sys.argv[sys.argv.index("--fail-rank") + 1]:
    sys.exit(3)
"#;

/// A scratch directory with the worker as `worker.py`, the module `wmod`, `worker.sh` (for
/// `--no-python`) and `mypython` (a `$PYTHON_EXEC` that marks the workers it starts).
fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ringrun-compat-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("worker.py"), WORKER).unwrap();
    std::fs::write(dir.join("wmod.py"), WORKER).unwrap();
    let exe = |name: &str, text: &str| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(dir.join(name), text).unwrap();
        std::fs::set_permissions(dir.join(name), std::fs::Permissions::from_mode(0o755)).unwrap();
    };
    exe(
        "worker.sh",
        "#!/bin/sh\nexec python3 \"$(dirname \"$0\")/worker.py\" \"$@\"\n",
    );
    exe("mypython", "#!/bin/sh\nVIA=mypython exec python3 \"$@\"\n");
    std::os::unix::fs::symlink(EXE, dir.join("torchrun")).unwrap();
    std::os::unix::fs::symlink(EXE, dir.join("horovodrun")).unwrap();
    dir
}

/// Runs `program args` in `dir`, killed after `within`.
fn run(
    dir: &Path,
    program: &str,
    args: &[String],
    env: &[(&str, &str)],
    within: Duration,
) -> Output {
    common::launched::output_within(
        Command::new(program)
            .args(args)
            .current_dir(dir)
            .env_remove("PYTHON")
            .env_remove("OMP_NUM_THREADS")
            .env_remove("PYTHON_EXEC")
            .envs(env.iter().copied()),
        within,
    )
}

/// A worker's arguments and torchrun variables.
type Report = (Vec<String>, BTreeMap<String, Option<String>>);

/// Every worker's report, by launch-rank tag.
fn reports(stdout: &str) -> BTreeMap<usize, Report> {
    stdout
        .lines()
        .filter_map(|l| {
            let (tag, json) = l.split_once("] WORKER ")?;
            let v: serde_json::Value = serde_json::from_str(json).unwrap();
            let argv = serde_json::from_value(v["argv"].clone()).unwrap();
            let env = serde_json::from_value(v["env"].clone()).unwrap();
            Some((tag.trim_start_matches('[').parse().unwrap(), (argv, env)))
        })
        .collect()
}

/// One invocation: how the launcher is called, and what every worker must see.
struct Case {
    name: &'static str,
    /// `launch` (`ringrun launch`), `torchrun`, `horovodrun` (`ringrun torchrun|horovodrun`),
    /// or `argv0:torchrun` (the binary under that name).
    entry: &'static str,
    /// The command line after the launcher's name; `{P}` is a free port.
    line: &'static str,
    env: &'static [(&'static str, &'static str)],
    /// Launch ranks expected on this host.
    ranks: &'static [usize],
    world: usize,
    /// The program's own arguments.
    argv: &'static [&'static str],
    /// Variables every worker must have (`{P}`: the port).
    expect: &'static [(&'static str, &'static str)],
}

const CASES: &[Case] = &[
    Case {
        name: "torchrun, one host, script without `--`",
        entry: "launch",
        line: "--nproc-per-node 2 worker.py --lr 0.1 --nproc_per_node 3 -m x",
        env: &[],
        ranks: &[0, 1],
        world: 2,
        argv: &["--lr", "0.1", "--nproc_per_node", "3", "-m", "x"],
        expect: &[
            ("MASTER_ADDR", "127.0.0.1"),
            ("TORCHELASTIC_MAX_RESTARTS", "3"),
            ("OMP_NUM_THREADS", "1"),
        ],
    },
    Case {
        name: "torchrun --standalone, underscores and `=`",
        entry: "torchrun",
        line: "--standalone --nnodes=1 --nproc_per_node=3 --max_restarts=0 worker.py a=b",
        env: &[],
        ranks: &[0, 1, 2],
        world: 3,
        argv: &["a=b"],
        expect: &[
            ("TORCHELASTIC_MAX_RESTARTS", "0"),
            ("TORCHELASTIC_RESTART_COUNT", "0"),
        ],
    },
    Case {
        name: "torchrun -m module",
        entry: "argv0:torchrun",
        line: "--nproc-per-node=2 -m wmod --epochs 1",
        env: &[],
        ranks: &[0, 1],
        world: 2,
        argv: &["--epochs", "1"],
        expect: &[],
    },
    Case {
        name: "torchrun --no-python, with `--`",
        entry: "launch",
        line: "--no-python --nproc_per_node 2 -- ./worker.sh --no-python",
        env: &[],
        ranks: &[0, 1],
        world: 2,
        argv: &["--no-python"],
        expect: &[],
    },
    Case {
        name: "torchrun: the interpreter is $PYTHON_EXEC",
        entry: "launch",
        line: "--nproc-per-node 1 worker.py",
        env: &[("PYTHON_EXEC", "./mypython")],
        ranks: &[0],
        world: 1,
        argv: &[],
        expect: &[("VIA", "mypython")],
    },
    Case {
        name: "torchrun static master, rdzv id",
        entry: "launch",
        line: "--nnodes 1 --nproc-per-node 2 --master_addr=127.0.0.1 --master_port={P} \
               --rdzv_id=job7 worker.py",
        env: &[],
        ranks: &[0, 1],
        world: 2,
        argv: &[],
        expect: &[
            ("MASTER_PORT", "{P}"),
            ("TORCHELASTIC_RUN_ID", "job7"),
            ("GROUP_RANK", "0"),
        ],
    },
    Case {
        name: "torchrun elastic MIN:MAX, c10d endpoint on this host",
        entry: "launch",
        line: "--nnodes=1:2 --nproc-per-node=2 --rdzv-id=el --rdzv-backend=c10d \
               --rdzv-endpoint=127.0.0.1:{P} worker.py --x",
        env: &[("RINGRUN_SECRET", SECRET)],
        ranks: &[0, 1],
        world: 2,
        argv: &["--x"],
        expect: &[
            ("MASTER_ADDR", "127.0.0.1"),
            ("MASTER_PORT", "{P}"),
            ("RINGRUN_MIN_SIZE", "2"),
            ("RINGRUN_MAX_SIZE", "4"),
            ("TORCHELASTIC_RUN_ID", "el"),
        ],
    },
    Case {
        name: "torchrun multi-node static, node 1 of 2 on 127.0.0.2",
        entry: "torchrun",
        line: "--nnodes=2 --node_rank=1 --nproc_per_node=2 --master_addr=127.0.0.1 \
               --master_port={P} --local_addr=127.0.0.2 worker.py",
        env: &[("RINGRUN_SECRET", SECRET)],
        ranks: &[2, 3],
        world: 4,
        argv: &[],
        expect: &[
            ("MASTER_ADDR", "127.0.0.1"),
            ("MASTER_PORT", "{P}"),
            ("GROUP_RANK", "1"),
        ],
    },
    Case {
        name: "horovodrun -np, program as given",
        entry: "horovodrun",
        line: "-np 2 python3 worker.py --batch 32",
        env: &[],
        ranks: &[0, 1],
        world: 2,
        argv: &["--batch", "32"],
        expect: &[],
    },
    Case {
        name: "horovodrun -H, elastic and ignored options",
        entry: "argv0:horovodrun",
        line: "-np 2 -H localhost:4 --min-np 1 --max-np 4 --verbose --disable-cache \
               --reset-limit 2 --blacklist-cooldown-range 5 10 --start-timeout 30 \
               python3 worker.py",
        env: &[],
        ranks: &[0, 1],
        world: 2,
        argv: &[],
        expect: &[
            ("RINGRUN_MIN_SIZE", "1"),
            ("RINGRUN_MAX_SIZE", "4"),
            ("TORCHELASTIC_MAX_RESTARTS", "2"),
        ],
    },
    Case {
        name: "horovodrun -H of two hosts, this one 127.0.0.2",
        entry: "launch",
        line: "-np 4 -H 127.0.0.1:2,127.0.0.2:2 --bind 127.0.0.2 --port {P} python3 worker.py",
        env: &[("RINGRUN_SECRET", SECRET)],
        ranks: &[2, 3],
        world: 4,
        argv: &[],
        expect: &[("GROUP_RANK", "1")],
    },
];

fn command(entry: &str, dir: &Path, line: &str) -> (String, Vec<String>) {
    let words = line.split_whitespace().map(str::to_string);
    match entry.strip_prefix("argv0:") {
        Some(name) => (dir.join(name).display().to_string(), words.collect()),
        None => (
            EXE.to_string(),
            [entry.to_string()].into_iter().chain(words).collect(),
        ),
    }
}

#[test]
fn torchrun_and_horovodrun_lines_run_with_ringrun_launch() {
    let dir = scratch("table");
    for case in CASES {
        let port = free_udp_port().to_string();
        let line = case.line.replace("{P}", &port);
        let (program, args) = command(case.entry, &dir, &line);
        let out = run(&dir, &program, &args, case.env, Duration::from_secs(30));
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        let why = format!("{}: {line}\n{stdout}\n{stderr}", case.name);
        assert!(out.status.success(), "{why}");
        let seen = reports(&stdout);
        assert_eq!(
            seen.keys().copied().collect::<Vec<_>>(),
            case.ranks,
            "{why}"
        );
        for (local, rank) in case.ranks.iter().enumerate() {
            let (argv, env) = &seen[rank];
            let var = |k: &str| env[k].clone().unwrap_or_default();
            assert_eq!(argv, case.argv, "{why}");
            assert_eq!(var("RANK"), rank.to_string(), "{why}");
            assert_eq!(var("LOCAL_RANK"), local.to_string(), "{why}");
            assert_eq!(var("WORLD_SIZE"), case.world.to_string(), "{why}");
            assert_eq!(
                var("LOCAL_WORLD_SIZE"),
                case.ranks.len().to_string(),
                "{why}"
            );
            assert!(var("MASTER_PORT").parse::<u16>().is_ok(), "{why}");
            assert!(!var("TORCHELASTIC_RUN_ID").is_empty(), "{why}");
            for (k, v) in case.expect {
                assert_eq!(var(k), v.replace("{P}", &port), "{k} in {why}");
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_failed_job_names_its_root_cause_and_the_exit_code_says_what_happened() {
    let dir = scratch("fail");
    let logs = dir.join("logs");
    let line = format!(
        "--nproc_per_node=2 --max_restarts=0 --log_dir={} worker.py --fail-rank 1",
        logs.display()
    );
    let (program, args) = command("launch", &dir, &line);
    let out = run(&dir, &program, &args, &[], Duration::from_secs(30));
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let root = stderr
        .split("Root Cause (first observed failure):")
        .nth(1)
        .expect(&stderr);
    assert!(stderr.contains("worker.py FAILED"), "{stderr}");
    assert!(root.contains("rank      : 1 (local_rank: 1)"), "{stderr}");
    assert!(root.contains("exitcode  : 3"), "{stderr}");
    let log = logs.join("worker-1.log");
    assert!(root.contains(&log.display().to_string()), "{stderr}");
    assert!(std::fs::read_to_string(&log).unwrap().contains("WORKER "));

    // Failing again after every restart allowed: the budget is spent.
    let (program, args) = command(
        "launch",
        &dir,
        "--nproc-per-node 1 --max-restarts 1 worker.py --fail-rank 0",
    );
    let out = run(&dir, &program, &args, &[], Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));

    // A bad command line.
    for line in [
        "--rdzv-backend etcd --nnodes 2 worker.py",
        "--no-such-option worker.py",
    ] {
        let (program, args) = command("launch", &dir, line);
        let out = run(&dir, &program, &args, &[], Duration::from_secs(10));
        assert_eq!(out.status.code(), Some(2), "{line}: {}", text(&out.stderr));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn redirects_and_local_ranks_filter_choose_what_reaches_the_console() {
    let dir = scratch("console");
    let (program, args) = command(
        "launch",
        &dir,
        "--nproc-per-node 3 --local-ranks-filter=0,2 worker.py",
    );
    let out = run(&dir, &program, &args, &[], Duration::from_secs(30));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shown: Vec<usize> = reports(&text(&out.stdout)).into_keys().collect();
    assert_eq!(shown, [0, 2]);

    let logs = dir.join("logs");
    let line = format!(
        "--nproc-per-node 2 -r 0:1 --log-dir {} worker.py",
        logs.display()
    );
    let (program, args) = command("launch", &dir, &line);
    let out = run(&dir, &program, &args, &[], Duration::from_secs(30));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shown: Vec<usize> = reports(&text(&out.stdout)).into_keys().collect();
    assert_eq!(shown, [1], "rank 0's stdout goes to its file only");
    let file = std::fs::read_to_string(logs.join("worker-0.log")).unwrap();
    assert!(file.contains("WORKER "), "{file}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Host `k` of two: `ringrun launch` in its namespace with torchrun's multi-node line; each
/// worker prints its torchrun variables, then trains (`ringrun train-worker`).
fn torchrun_host(net: &Net, k: usize, port: u16, steps: u64) -> std::process::Child {
    let script = format!(
        "echo \"ENV RANK=$RANK WORLD_SIZE=$WORLD_SIZE MASTER=$MASTER_ADDR:$MASTER_PORT\"; \
         exec {EXE} train-worker --steps {steps} --step-ms 5"
    );
    Command::new("ip")
        .args(["netns", "exec", &net.members[k], EXE, "launch"])
        .args([
            "--nnodes",
            "2",
            "--node-rank",
            &k.to_string(),
            "--nproc-per-node",
            "2",
        ])
        .args([
            "--rdzv-backend",
            "c10d",
            "--rdzv-id",
            "nsjob",
            "--max-restarts",
            "0",
        ])
        .arg(format!("--rdzv-endpoint={}:{port}", addr(0)))
        .args(["--no-python", "sh", "-c", &script])
        .env("RINGRUN_SECRET", SECRET)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ip netns exec ringrun launch")
}

#[test]
fn two_hosts_started_with_torchrun_multi_node_lines_form_one_job() {
    let net = match Net::build(&format!("rrt{}", std::process::id() % 100_000), &[0, 0]) {
        Ok(n) => n,
        Err(why) => return skip_or_fail(&why),
    };
    let steps = 60;
    let port = 29_400;
    let hosts: Vec<_> = (0..2)
        .map(|k| torchrun_host(&net, k, port, steps))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut outs = Vec::new();
    for mut child in hosts {
        while child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "the job did not finish in 90 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        outs.push(child.wait_with_output().unwrap());
    }
    let all: String = outs
        .iter()
        .map(|o| text(&o.stdout) + &text(&o.stderr))
        .collect();
    for (k, o) in outs.iter().enumerate() {
        assert!(o.status.success(), "host {k}: {}\n{all}", o.status);
    }
    let stdout: String = outs.iter().map(|o| text(&o.stdout)).collect();
    let envs: Vec<&str> = stdout.lines().filter(|l| l.contains("] ENV ")).collect();
    assert_eq!(envs.len(), 4, "{all}");
    for r in 0..4 {
        let want = format!("[{r}] ENV RANK={r} WORLD_SIZE=4 MASTER={}:{port}", addr(0));
        assert!(envs.contains(&want.as_str()), "{want} in {all}");
    }
    // One job: every step of every worker ran in a world of 4, in one epoch.
    let steps_seen: Vec<&str> = stdout.lines().filter(|l| l.contains("] step ")).collect();
    assert_eq!(steps_seen.len(), 4 * steps as usize, "{all}");
    let epochs: std::collections::BTreeSet<&str> = steps_seen
        .iter()
        .map(|l| {
            assert!(l.contains(" size 4 epoch "), "{l}");
            l.rsplit(' ').next().unwrap()
        })
        .collect();
    assert_eq!(epochs.len(), 1, "one epoch: {epochs:?}");
    let finals: std::collections::BTreeSet<&str> = stdout
        .lines()
        .filter_map(|l| l.split_once("] final ").map(|(_, f)| f))
        .collect();
    assert_eq!(
        finals.len(),
        1,
        "every worker ends with the same model: {all}"
    );
}

#[test]
fn the_help_shows_the_compatibility_forms_in_their_own_section() {
    for entry in ["launch", "torchrun", "horovodrun"] {
        let out = Command::new(EXE).args([entry, "--help"]).output().unwrap();
        let help = text(&out.stdout);
        assert!(out.status.success(), "{help}");
        let own = help.find("--nproc-per-node").expect(&help);
        let section = help.find("torchrun / horovodrun options:").expect(&help);
        assert!(own < section, "ringrun's own options come first: {help}");
        for form in ["--rdzv-endpoint", "-np N", "--no-python", "Exit codes"] {
            assert!(help[section..].contains(form), "{form}: {help}");
        }
    }
}
