//! `ringrun`: the command line.

mod bench;
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
