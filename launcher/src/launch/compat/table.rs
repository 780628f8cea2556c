//! Every option of `torchrun` (torch.distributed.run) and `horovodrun`, and what `ringrun
//! launch` makes of it. Names are written with dashes; `--foo_bar` is looked up as `--foo-bar`.

/// What an accepted option becomes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Act {
    /// The ringrun option of this name, with the same value.
    Same(&'static str),
    /// Read with the rest of the command line (see `super::derive`).
    Key(Key),
    /// Accepted and ignored; the reason is printed on stderr.
    Ignore(&'static str),
}

/// Options whose meaning depends on others.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Key {
    NprocPerNode,
    MasterAddr,
    MasterPort,
    LocalAddr,
    Standalone,
    RdzvBackend,
    RdzvEndpoint,
    Module,
    NoPython,
    RunPath,
    NumProc,
    Hosts,
    Hostfile,
    Verbose,
}

/// One option: its spellings (the first is the canonical one), how many values it takes.
#[derive(Debug)]
pub(crate) struct Opt {
    pub(crate) names: &'static [&'static str],
    pub(crate) arity: usize,
    pub(crate) act: Act,
}

const fn opt(names: &'static [&'static str], arity: usize, act: Act) -> Opt {
    Opt { names, arity, act }
}

use Act::{Ignore, Key as K, Same};

const NO_TUNING: &str = "Horovod's tuning knob; ringrun's collectives have their own";
const NO_SSH: &str = "ringrun starts this host's workers only: run the same line on every host";
const ONE_CONTROLLER: &str = "ringrun runs its own collectives (no Gloo, MPI or jsrun)";

/// The table. torchrun's options first, then horovodrun's.
pub(crate) const OPTIONS: &[Opt] = &[
    // torchrun: sizes.
    opt(&["--nproc-per-node"], 1, K(Key::NprocPerNode)),
    opt(&["--nnodes"], 1, Same("--nnodes")),
    opt(&["--node-rank"], 1, Same("--node-rank")),
    // torchrun: rendezvous.
    opt(&["--rdzv-backend"], 1, K(Key::RdzvBackend)),
    opt(&["--rdzv-endpoint"], 1, K(Key::RdzvEndpoint)),
    opt(&["--rdzv-id"], 1, Same("--run-id")),
    opt(
        &["--rdzv-conf"],
        1,
        Ignore("ringrun's membership has its own timeouts (RINGRUN_INITIAL_WAIT_MS)"),
    ),
    opt(&["--standalone"], 0, K(Key::Standalone)),
    opt(&["--master-addr"], 1, K(Key::MasterAddr)),
    opt(&["--master-port"], 1, K(Key::MasterPort)),
    opt(&["--local-addr"], 1, K(Key::LocalAddr)),
    // torchrun: the workers.
    opt(&["--max-restarts"], 1, Same("--max-restarts")),
    opt(
        &["--monitor-interval"],
        1,
        Ignore("ringrun watches its workers continuously"),
    ),
    opt(
        &["--start-method"],
        1,
        Ignore("every worker is a process of its own (spawn)"),
    ),
    opt(&["--event-log-handler"], 1, Ignore("no event log")),
    opt(
        &["--role"],
        1,
        Ignore("every worker has the role `default`"),
    ),
    opt(&["--module", "-m"], 0, K(Key::Module)),
    opt(&["--no-python"], 0, K(Key::NoPython)),
    opt(&["--run-path"], 0, K(Key::RunPath)),
    opt(
        &["--shutdown-timeout"],
        1,
        Ignore("workers get 10 s after SIGTERM/SIGINT"),
    ),
    opt(
        &["--signals-to-handle"],
        1,
        Ignore("SIGINT and SIGTERM are forwarded"),
    ),
    opt(&["--numa-binding"], 1, Ignore("no NUMA binding")),
    opt(
        &["--virtual-local-rank"],
        0,
        Ignore("LOCAL_RANK is the rank on the host"),
    ),
    opt(&["--print-completion"], 1, Ignore("no shell completion")),
    // torchrun: output.
    opt(&["--log-dir"], 1, Same("--log-dir")),
    opt(&["--redirects", "-r"], 1, Same("--redirects")),
    opt(&["--tee", "-t"], 1, Same("--tee")),
    opt(&["--local-ranks-filter"], 1, Same("--local-ranks-filter")),
    opt(
        &["--log-line-prefix-template"],
        1,
        Ignore("lines are prefixed with `[RANK]`"),
    ),
    opt(
        &["--logs-specs"],
        1,
        Ignore("logs are `--log-dir`/worker-N.log"),
    ),
    opt(
        &["--duplicate-stdout-filters"],
        1,
        Ignore("no duplicate-output files"),
    ),
    opt(
        &["--duplicate-stderr-filters"],
        1,
        Ignore("no duplicate-output files"),
    ),
    // horovodrun: sizes and hosts.
    opt(&["--num-proc", "-np"], 1, K(Key::NumProc)),
    opt(&["--hosts", "-H"], 1, K(Key::Hosts)),
    opt(&["--hostfile", "-hostfile"], 1, K(Key::Hostfile)),
    opt(&["--min-num-proc"], 1, Same("--min-np")),
    opt(&["--max-num-proc"], 1, Same("--max-np")),
    opt(&["--verbose"], 0, K(Key::Verbose)),
    opt(&["--output-filename"], 1, Same("--log-dir")),
    // horovodrun: elastic.
    opt(&["--reset-limit"], 1, Same("--max-restarts")),
    opt(
        &["--blacklist-cooldown-range"],
        2,
        Ignore("a failed worker is restarted after 0.2-5 s of back-off"),
    ),
    opt(
        &["--cooldown-range"],
        2,
        Ignore("a failed worker is restarted after 0.2-5 s of back-off"),
    ),
    opt(
        &["--elastic-timeout"],
        1,
        Ignore("an elastic job waits for --min-np workers as long as it runs"),
    ),
    // horovodrun: the launcher's own machinery.
    opt(&["--disable-cache"], 0, Ignore("nothing is cached")),
    opt(&["--check-build", "-cb"], 0, Ignore("nothing to check")),
    opt(&["--version", "-v"], 0, Ignore("see `ringrun --version`")),
    opt(
        &["--config-file"],
        1,
        Ignore("give the options on the command line"),
    ),
    opt(&["--ssh-port", "-p"], 1, Ignore(NO_SSH)),
    opt(&["--ssh-identity-file", "-i"], 1, Ignore(NO_SSH)),
    opt(
        &["--network-interfaces"],
        1,
        Ignore("workers use the --bind address"),
    ),
    opt(
        &["--network-interface"],
        1,
        Ignore("workers use the --bind address"),
    ),
    opt(&["--gloo"], 0, Ignore(ONE_CONTROLLER)),
    opt(&["--mpi"], 0, Ignore(ONE_CONTROLLER)),
    opt(&["--jsrun"], 0, Ignore(ONE_CONTROLLER)),
    opt(&["--tcp"], 0, Ignore(ONE_CONTROLLER)),
    opt(&["--mpi-args"], 1, Ignore(ONE_CONTROLLER)),
    opt(&["--binding-args"], 1, Ignore(ONE_CONTROLLER)),
    opt(&["--mpi-threads-disable"], 0, Ignore(ONE_CONTROLLER)),
    opt(&["--no-mpi-threads-disable"], 0, Ignore(ONE_CONTROLLER)),
    // horovodrun: tuning, timeline, stall check, logging.
    opt(&["--fusion-threshold-mb"], 1, Ignore(NO_TUNING)),
    opt(&["--cycle-time-ms"], 1, Ignore(NO_TUNING)),
    opt(&["--cache-capacity"], 1, Ignore(NO_TUNING)),
    opt(&["--hierarchical-allreduce"], 0, Ignore(NO_TUNING)),
    opt(&["--no-hierarchical-allreduce"], 0, Ignore(NO_TUNING)),
    opt(&["--hierarchical-allgather"], 0, Ignore(NO_TUNING)),
    opt(&["--no-hierarchical-allgather"], 0, Ignore(NO_TUNING)),
    opt(&["--autotune"], 0, Ignore(NO_TUNING)),
    opt(&["--no-autotune"], 0, Ignore(NO_TUNING)),
    opt(&["--autotune-log-file"], 1, Ignore(NO_TUNING)),
    opt(&["--autotune-warmup-samples"], 1, Ignore(NO_TUNING)),
    opt(&["--autotune-steps-per-sample"], 1, Ignore(NO_TUNING)),
    opt(&["--autotune-bayes-opt-max-samples"], 1, Ignore(NO_TUNING)),
    opt(&["--autotune-gaussian-process-noise"], 1, Ignore(NO_TUNING)),
    opt(&["--num-nccl-streams"], 1, Ignore(NO_TUNING)),
    opt(&["--thread-affinity"], 1, Ignore(NO_TUNING)),
    opt(&["--gloo-timeout-seconds"], 1, Ignore(NO_TUNING)),
    opt(&["--timeline-filename"], 1, Ignore("no timeline")),
    opt(&["--timeline-mark-cycles"], 0, Ignore("no timeline")),
    opt(&["--no-timeline-mark-cycles"], 0, Ignore("no timeline")),
    opt(
        &["--no-stall-check"],
        0,
        Ignore("no stall check: peers time out"),
    ),
    opt(
        &["--stall-check"],
        0,
        Ignore("no stall check: peers time out"),
    ),
    opt(
        &["--stall-check-warning-time-seconds"],
        1,
        Ignore("no stall check: peers time out"),
    ),
    opt(
        &["--stall-check-shutdown-time-seconds"],
        1,
        Ignore("no stall check: peers time out"),
    ),
    opt(&["--log-level"], 1, Ignore("set RINGRUN_LOG")),
    opt(&["--log-with-timestamp"], 0, Ignore("set RINGRUN_LOG")),
    opt(&["--log-without-timestamp"], 0, Ignore("set RINGRUN_LOG")),
    opt(&["--log-hide-timestamp"], 0, Ignore("set RINGRUN_LOG")),
    opt(&["--no-log-hide-timestamp"], 0, Ignore("set RINGRUN_LOG")),
    opt(
        &["--prefix-output-with-timestamp", "-prefix-timestamp"],
        0,
        Ignore("lines are prefixed with `[RANK]`"),
    ),
];

/// The option spelled `name` (dashes, `--foo_bar` already turned into `--foo-bar`).
pub(crate) fn find(name: &str) -> Option<&'static Opt> {
    OPTIONS.iter().find(|o| o.names.contains(&name))
}
