//! `ringrun`: the command line.

mod bench;
mod data_check;
mod demo;
mod launch;
mod member;
mod secret;
mod status;
mod train;

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

/// Fault-tolerant, elastic allreduce.
#[derive(Parser, Debug)]
#[command(name = "ringrun", version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run a small elastic training job on this host, kill a worker, and check the result.
    Demo(demo::DemoArgs),
    /// Start local workers of an elastic job: `ringrun launch --np 4 -- python train.py`
    /// (torchrun's and horovodrun's command lines are accepted too).
    #[command(visible_aliases = ["torchrun", "horovodrun"], after_help = launch::compat::HELP)]
    Launch(launch::LaunchCmd),
    /// Allreduce benchmark with nccl-tests' all_reduce_perf output.
    Bench(bench::BenchArgs),
    /// Print a running job's members, as one of them sees it.
    Status(status::StatusArgs),
    /// Check a data ledger (RINGRUN_DATA_LEDGER): every index read exactly once per data
    /// epoch by the committed steps, in the one-worker order.
    DataCheck(data_check::DataCheckArgs),
    /// Join a job's membership group and stay (debugging, tests).
    #[command(hide = true)]
    Member(member::MemberArgs),
    /// Train a small deterministic model as one elastic worker (tests, demo).
    #[command(hide = true)]
    TrainWorker(train::TrainArgs),
}

fn main() -> ExitCode {
    let mut argv: Vec<String> = std::env::args().collect();
    let mut verbose = false;
    if let Err(e) = launch_compat(&mut argv, &mut verbose) {
        eprintln!("ringrun launch: error: {e}");
        return ExitCode::from(launch::summary::code::USAGE);
    }
    let default_level = if verbose { "info" } else { "warn" };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RINGRUN_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        )
        .with_writer(std::io::stderr)
        .init();
    let cmd = Cli::parse_from(argv).cmd;
    let launching = matches!(cmd, Cmd::Launch(_));
    let result = match cmd {
        Cmd::Demo(args) => demo::main(args),
        Cmd::Launch(args) => launch::main(args),
        Cmd::Bench(args) => bench::main(args),
        Cmd::Status(args) => status::main(args),
        Cmd::DataCheck(args) => data_check::main(args),
        Cmd::Member(args) => member::main(args),
        Cmd::TrainWorker(args) => train::main(args),
    };
    result.unwrap_or_else(|e| {
        eprintln!("ringrun: {e:#}");
        match launching {
            true => ExitCode::from(launch::summary::code::LAUNCHER),
            false => ExitCode::FAILURE,
        }
    })
}

/// `torchrun ...` / `horovodrun ...` (this binary under that name) is `ringrun launch ...`;
/// a launch command line in torchrun's or horovodrun's form is rewritten into ringrun's.
fn launch_compat(argv: &mut Vec<String>, verbose: &mut bool) -> Result<(), String> {
    let name = argv
        .first()
        .map_or("", |a| a.rsplit('/').next().unwrap_or(a));
    if matches!(name, "torchrun" | "horovodrun") {
        argv.insert(1, "launch".into());
    }
    if !matches!(
        argv.get(1).map(String::as_str),
        Some("launch" | "torchrun" | "horovodrun")
    ) {
        return Ok(());
    }
    let native = launch::compat::native_options(&launch::LaunchCmd::augment_args(
        clap::Command::new("launch"),
    ));
    let r = launch::compat::gather(|facts| launch::compat::rewrite(&argv[2..], &native, facts))?;
    for note in &r.notes {
        eprintln!("ringrun: {note}");
    }
    if r.changed {
        let quoted: Vec<String> = r.args.iter().map(|a| shell_quoted(a)).collect();
        eprintln!("ringrun: read as: ringrun launch {}", quoted.join(" "));
    }
    *verbose = r.verbose;
    argv.truncate(2);
    argv.extend(r.args);
    Ok(())
}

/// `a` as a shell would need it written.
fn shell_quoted(a: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./:=,@%+".contains(c);
    match !a.is_empty() && a.chars().all(plain) {
        true => a.to_string(),
        false => format!("'{}'", a.replace('\'', r"'\''")),
    }
}

/// Seeds given as `HOST:PORT` strings, resolved (preferring IPv4 or IPv6 as asked).
pub(crate) fn launch_seeds(
    seeds: &[String],
    prefer_v4: bool,
) -> anyhow::Result<Vec<std::net::SocketAddr>> {
    use std::net::ToSocketAddrs;
    let mut out = Vec::new();
    for s in seeds {
        // A seed that does not resolve yet (a pod not scheduled) is skipped: any one live
        // seed is enough to join, and the epoch's majority rule guards against a lonely start.
        let addrs: Vec<_> = match s.to_socket_addrs() {
            Ok(a) => a.collect(),
            Err(e) => {
                eprintln!("ringrun: seed {s} skipped: {e}");
                continue;
            }
        };
        let preferred = addrs.iter().find(|a| a.is_ipv4() == prefer_v4);
        out.extend(preferred.or(addrs.first()).copied());
    }
    Ok(out)
}
