//! How a group is configured: explicitly, or from the `RINGRUN_*` environment the launcher
//! sets (every variable is listed on [`GroupConfig::from_env`]).

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use ringrun_collectives::{CommConfig, transport::TransportKind};
use ringrun_membership::{MIN_SECRET_LEN, MembershipConfig};

use crate::{device::DeviceSpec, error::GroupError};

/// Everything a member needs to join a group.
#[derive(Clone, Debug)]
pub struct GroupConfig {
    /// Stable node id of this worker slot (ties between members started in the same
    /// microsecond are broken by it).
    pub node: u64,
    /// The job's run id; members of different runs never talk.
    pub run_id: String,
    /// The job secret (at least 16 bytes): authenticates membership, agreement and transport.
    pub secret: Vec<u8>,
    /// Address every socket of this member binds to.
    pub bind: IpAddr,
    /// Membership (SWIM) port; 0 picks a free one.
    pub member_port: u16,
    /// Membership addresses of members to join through (this member's own is skipped).
    pub seeds: Vec<SocketAddr>,
    /// Host label gossiped to the others.
    pub host: String,
    /// Rank of this worker on its host.
    pub local_rank: u32,
    /// The global rank the launcher gave this worker's slot (torchrun's `RANK`), kept across
    /// restarts. Views list members by it, so the first epoch's ranks equal the launch ranks
    /// (see `crate::agreement`); `None` sorts after every member that has one.
    pub launch_rank: Option<u32>,
    /// Workers on this host (more than its GPUs: the device side stages, since NCCL refuses two
    /// ranks on one GPU).
    pub local_world_size: u32,
    /// No epoch with fewer members is formed.
    pub min_size: usize,
    /// At most this many members; more wait outside.
    pub max_size: usize,
    /// The first epoch waits for this many members...
    pub initial_size: usize,
    /// ...for at most this long; then a strict majority of it (and `min_size`) is enough.
    pub initial_wait: Duration,
    /// Whether this worker may start the group (form its first epoch); see
    /// `agreement::Config::bootstrap`.
    pub bootstrap: bool,
    /// SWIM timing.
    pub membership: MembershipConfig,
    /// Deadline of one collective. A dead peer is reported long before it (SWIM detects in
    /// about a second); it bounds the wait on a live but silent one.
    pub op_timeout: Duration,
    /// How long [`crate::Group::join`] and [`crate::Group::restore`] wait for an epoch.
    pub restore_timeout: Duration,
    /// How long a commit boundary waits for waiting joiners to be admitted.
    pub admit_wait: Duration,
    /// Directory for durable checkpoints, if any.
    pub checkpoint_dir: Option<PathBuf>,
    /// Every this many commits, the committed state is also written to disk.
    pub checkpoint_every: u64,
    /// Collective tuning.
    pub comm: CommConfig,
    /// What the epochs' collectives run over.
    pub transport: TransportKind,
    /// Device collectives ([`crate::Group::allreduce_device`] and friends): `None` for a
    /// CPU-only group; otherwise the backend that builds one device communicator per epoch.
    pub device: Option<DeviceSpec>,
    /// Steps the progress report's straggler window spans (compute time and link waits per
    /// step are averaged over the newest this many commits).
    pub straggler_steps: u32,
}

impl GroupConfig {
    /// A configuration for a job on this host's loopback.
    pub fn local(node: u64, secret: impl Into<Vec<u8>>) -> GroupConfig {
        GroupConfig {
            node,
            run_id: "ringrun".into(),
            secret: secret.into(),
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            member_port: 0,
            seeds: Vec::new(),
            host: "localhost".into(),
            local_rank: 0,
            launch_rank: None,
            local_world_size: 1,
            min_size: 1,
            max_size: usize::MAX,
            initial_size: 1,
            initial_wait: Duration::from_secs(10),
            bootstrap: true,
            membership: MembershipConfig::default(),
            op_timeout: Duration::from_secs(60),
            restore_timeout: Duration::from_secs(60),
            admit_wait: Duration::from_secs(3),
            checkpoint_dir: None,
            checkpoint_every: 10,
            comm: CommConfig::default(),
            transport: TransportKind::default(),
            device: None,
            straggler_steps: 10,
        }
    }

    /// The configuration the launcher hands its workers:
    ///
    /// | variable | meaning | default |
    /// |---|---|---|
    /// | `RINGRUN_SECRET` or `RINGRUN_SECRET_FILE` | job secret (≥ 16 bytes) | required |
    /// | `RINGRUN_NODE_ID` | stable node id | the process id |
    /// | `RINGRUN_RUN_ID` | run id | `ringrun` |
    /// | `RINGRUN_BIND` | address to bind | `127.0.0.1` |
    /// | `RINGRUN_MEMBER_PORT` | SWIM port | `0` (any) |
    /// | `RINGRUN_SEEDS` | `HOST:PORT,...` membership seeds | none (new group) |
    /// | `RINGRUN_HOST` | host label | `localhost` |
    /// | `RINGRUN_LOCAL_RANK` | rank on this host | `0` |
    /// | `RANK` | the launcher's global rank of this slot: the rank asked for in every view | none |
    /// | `RINGRUN_LOCAL_WORLD_SIZE` (or `LOCAL_WORLD_SIZE`) | workers on this host | `1` |
    /// | `RINGRUN_MIN_SIZE`, `RINGRUN_MAX_SIZE` | world size bounds | 1, unbounded |
    /// | `RINGRUN_INITIAL_SIZE` | size the first epoch waits for | `RINGRUN_MIN_SIZE` |
    /// | `RINGRUN_INITIAL_WAIT_MS` | how long it waits (then a strict majority of it will do) | 10000 |
    /// | `RINGRUN_BOOTSTRAP` | `0`: this worker may not start the group, only join a running one (the launcher's in-process restarts) | `1` |
    /// | `RINGRUN_OP_TIMEOUT_MS` | deadline of one collective | 60000 |
    /// | `RINGRUN_RESTORE_TIMEOUT_MS` | wait for a new epoch | 60000 |
    /// | `RINGRUN_CHECKPOINT_DIR` | durable checkpoints | none |
    /// | `RINGRUN_CHECKPOINT_EVERY` | commits between checkpoints | 10 |
    /// | `RINGRUN_TRANSPORT` | [`TransportKind`]: `auto` (shared memory in a host, TCP across), `tcp`, `quic`, `shm` (one host), or `nccl`: a device group (host links as `auto`) | `auto` |
    /// | `RINGRUN_DEVICE` | `cuda`: a device group, over NCCL where it runs, else staged through host memory over `RINGRUN_TRANSPORT`; `cpu` | `cpu` |
    /// | `RINGRUN_FUSION_BYTES` | largest fusion bucket of grouped allreduces | 128 MiB |
    /// | `RINGRUN_SPIN_US` | how long a waiting collective re-polls before it parks | 50 |
    /// | `RINGRUN_STRAGGLER_STEPS` | steps a straggler window spans | 10 |
    pub fn from_env() -> Result<GroupConfig, GroupError> {
        let secret = match (var("RINGRUN_SECRET"), var("RINGRUN_SECRET_FILE")) {
            (_, Some(path)) => {
                std::fs::read(&path).map_err(|e| bad(format!("RINGRUN_SECRET_FILE {path}: {e}")))?
            }
            (Some(s), None) => s.into_bytes(),
            (None, None) => return Err(bad("no job secret: set RINGRUN_SECRET".into())),
        };
        let secret = secret.trim_ascii().to_vec();
        if secret.len() < MIN_SECRET_LEN {
            return Err(bad(format!("the job secret needs {MIN_SECRET_LEN} bytes")));
        }
        let mut c = GroupConfig::local(
            parse("RINGRUN_NODE_ID")?.unwrap_or(std::process::id() as u64),
            secret,
        );
        if let Some(r) = var("RINGRUN_RUN_ID") {
            c.run_id = r;
        }
        c.bind = parse("RINGRUN_BIND")?.unwrap_or(c.bind);
        c.member_port = parse("RINGRUN_MEMBER_PORT")?.unwrap_or(0);
        c.seeds = match var("RINGRUN_SEEDS") {
            Some(s) => parse_seeds(&s)?,
            None => Vec::new(),
        };
        c.host = var("RINGRUN_HOST").unwrap_or(c.host);
        c.local_rank = parse("RINGRUN_LOCAL_RANK")?.unwrap_or(0);
        c.launch_rank = parse("RANK")?;
        c.local_world_size = match parse("RINGRUN_LOCAL_WORLD_SIZE")? {
            Some(n) => n,
            None => parse("LOCAL_WORLD_SIZE")?.unwrap_or(1),
        };
        c.min_size = parse("RINGRUN_MIN_SIZE")?.unwrap_or(1);
        c.max_size = parse("RINGRUN_MAX_SIZE")?.unwrap_or(usize::MAX);
        c.initial_size = parse("RINGRUN_INITIAL_SIZE")?.unwrap_or(c.min_size);
        let ms = |name, default: Duration| -> Result<Duration, GroupError> {
            Ok(parse::<u64>(name)?.map_or(default, Duration::from_millis))
        };
        c.initial_wait = ms("RINGRUN_INITIAL_WAIT_MS", c.initial_wait)?;
        c.bootstrap = parse::<u8>("RINGRUN_BOOTSTRAP")?.is_none_or(|b| b != 0);
        c.op_timeout = ms("RINGRUN_OP_TIMEOUT_MS", c.op_timeout)?;
        c.restore_timeout = ms("RINGRUN_RESTORE_TIMEOUT_MS", c.restore_timeout)?;
        c.checkpoint_dir = var("RINGRUN_CHECKPOINT_DIR").map(PathBuf::from);
        c.checkpoint_every = parse("RINGRUN_CHECKPOINT_EVERY")?.unwrap_or(10).max(1);
        c.transport = parse("RINGRUN_TRANSPORT")?.unwrap_or_default();
        c.device = device_from(c.transport, var("RINGRUN_DEVICE").as_deref())?;
        c.comm.fusion_bytes = parse("RINGRUN_FUSION_BYTES")?.unwrap_or(c.comm.fusion_bytes);
        c.comm.spin = parse::<u64>("RINGRUN_SPIN_US")?.map_or(c.comm.spin, Duration::from_micros);
        c.straggler_steps = parse("RINGRUN_STRAGGLER_STEPS")?.unwrap_or(10).max(1);
        Ok(c)
    }
}

/// The device backend the transport and `RINGRUN_DEVICE` ask for (pure, for tests).
pub fn device_from(
    transport: TransportKind,
    device: Option<&str>,
) -> Result<Option<DeviceSpec>, GroupError> {
    let cuda = match device {
        None | Some("cpu") => false,
        Some("cuda") => true,
        Some(d) => return Err(bad(format!("RINGRUN_DEVICE={d}: expected cuda or cpu"))),
    };
    Ok(match (transport == TransportKind::Nccl, cuda) {
        (true, _) => Some(DeviceSpec::Nccl),
        (false, true) => Some(DeviceSpec::Cuda),
        (false, false) => None,
    })
}

/// `HOST:PORT,...`; host names are resolved.
pub fn parse_seeds(list: &str) -> Result<Vec<SocketAddr>, GroupError> {
    use std::net::ToSocketAddrs;
    let mut seeds = Vec::new();
    for s in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let mut addrs = s
            .to_socket_addrs()
            .map_err(|e| bad(format!("seed {s}: {e}")))?;
        seeds.extend(addrs.next());
    }
    Ok(seeds)
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn parse<T: std::str::FromStr>(name: &str) -> Result<Option<T>, GroupError>
where
    T::Err: std::fmt::Display,
{
    var(name).map(|v| parse_value(name, &v)).transpose()
}

/// `value` of the variable `name`, or an error naming both.
fn parse_value<T: std::str::FromStr>(name: &str, value: &str) -> Result<T, GroupError>
where
    T::Err: std::fmt::Display,
{
    value
        .parse()
        .map_err(|e| bad(format!("{name}={value}: {e}")))
}

fn bad(what: String) -> GroupError {
    GroupError::InvalidArgument(what)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_transport_and_device_variables_pick_the_device_backend() {
        let t = |name: &str| name.parse::<TransportKind>().unwrap();
        let pick = |t, d| device_from(t, d).map(|s| s.is_some());
        let kind = |t, d| format!("{:?}", device_from(t, d).unwrap());
        assert_eq!(kind(t("nccl"), Some("cuda")), "Some(Nccl)");
        assert_eq!(kind(t("shm"), Some("cuda")), "Some(Cuda)");
        assert!(!pick(TransportKind::default(), None).unwrap());
        assert!(!pick(t("auto"), Some("cpu")).unwrap());
        assert!(!pick(t("tcp"), None).unwrap());
        assert!(pick(t("nccl"), None).unwrap());
        assert!(pick(t("auto"), Some("cuda")).unwrap());
        assert!(!pick(t("quic"), None).unwrap());
        assert!(pick(t("auto"), Some("rocm")).is_err());
    }

    #[test]
    fn an_unknown_transport_names_the_variable_and_the_valid_ones() {
        let e = parse_value::<TransportKind>("RINGRUN_TRANSPORT", "pigeon").unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("RINGRUN_TRANSPORT") && text.contains("pigeon"),
            "{text}"
        );
        assert!(text.contains("auto, tcp, quic, shm, nccl"), "{text}");
    }
}
