//! `ringrun`: the command line.

mod bench;
mod demo;
mod launch;
mod member;
mod secret;
mod status;
mod train;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
    /// Start local workers of an elastic job: `ringrun launch --np 4 -- python train.py`.
    Launch(launch::LaunchCmd),
    /// Allreduce benchmark with nccl-tests' all_reduce_perf output.
    Bench(bench::BenchArgs),
    /// Print a running job's members, as one of them sees it.
    Status(status::StatusArgs),
    /// Join a job's membership group and stay (debugging, tests).
    #[command(hide = true)]
    Member(member::MemberArgs),
    /// Train a small deterministic model as one elastic worker (tests, demo).
    #[command(hide = true)]
    TrainWorker(train::TrainArgs),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RINGRUN_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match Cli::parse().cmd {
        Cmd::Demo(args) => demo::main(args),
        Cmd::Launch(args) => launch::main(args),
        Cmd::Bench(args) => bench::main(args),
        Cmd::Status(args) => status::main(args),
        Cmd::Member(args) => member::main(args),
        Cmd::TrainWorker(args) => train::main(args),
    };
    result.unwrap_or_else(|e| {
        eprintln!("ringrun: {e:#}");
        ExitCode::FAILURE
    })
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
