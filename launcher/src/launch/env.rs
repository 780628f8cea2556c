//! The environment contract: what every worker finds in its environment.
//!
//! Three audiences read it:
//! - the ringrun runtime (`RINGRUN_*`, read by `GroupConfig::from_env`);
//! - unmodified torchrun scripts (`RANK`, `LOCAL_RANK`, `WORLD_SIZE`, `LOCAL_WORLD_SIZE`,
//!   `GROUP_RANK`, `GROUP_WORLD_SIZE`, `ROLE_*`, `MASTER_ADDR`, `MASTER_PORT`, `TORCHELASTIC_*`);
//! - TensorFlow-style scripts (`TF_CONFIG`, a JSON cluster spec), in the way XLearning's
//!   submitter hands each process its role.
//!
//! `RANK` and `WORLD_SIZE` are the *launch-time* values (this host's slot and the requested
//! world); an elastic script asks the runtime for the rank of the current epoch.

use std::net::SocketAddr;

use ringrun_collectives::transport::TransportKind;

/// What one worker slot needs to know about the job and itself.
#[derive(Clone, Debug)]
pub(crate) struct Slot {
    /// Stable id of the slot across restarts.
    pub(crate) node_id: u64,
    /// Rank on this host.
    pub(crate) local_rank: usize,
    /// Launch-time global rank.
    pub(crate) rank: usize,
    /// SWIM address of this slot.
    pub(crate) member_addr: SocketAddr,
    /// How many times this slot (restart mode: the job) was restarted.
    pub(crate) restarts: u32,
}

/// Job-wide facts.
#[derive(Clone, Debug)]
pub(crate) struct JobEnv {
    pub(crate) run_id: String,
    pub(crate) secret: String,
    pub(crate) seeds: Vec<SocketAddr>,
    pub(crate) world_size: usize,
    pub(crate) local_world_size: usize,
    pub(crate) group_rank: usize,
    pub(crate) min_size: usize,
    pub(crate) max_size: Option<usize>,
    /// `MASTER_ADDR` (a host name or address) and `MASTER_PORT`.
    pub(crate) master: (String, u16),
    /// Hosts in the job at launch (`GROUP_WORLD_SIZE`).
    pub(crate) group_world_size: usize,
    pub(crate) max_restarts: u32,
    pub(crate) checkpoint_dir: Option<String>,
    /// `--transport`, handed on as `RINGRUN_TRANSPORT`.
    pub(crate) transport: TransportKind,
    /// `--device`, handed on as `RINGRUN_DEVICE`.
    pub(crate) device: String,
    pub(crate) host: String,
    /// Every launch-time worker address, for TF_CONFIG.
    pub(crate) workers: Vec<SocketAddr>,
    /// More variables (horovodrun's `--start-timeout` as `RINGRUN_INITIAL_WAIT_MS`).
    pub(crate) extra: Vec<(String, String)>,
    /// `--input`: each launch rank's files and the manifest (set even when a share is empty).
    pub(crate) inputs: Option<super::input::Inputs>,
}

/// The variables for `slot`, in a stable order.
pub(crate) fn vars(job: &JobEnv, slot: &Slot) -> Vec<(String, String)> {
    let seeds: Vec<String> = job.seeds.iter().map(ToString::to_string).collect();
    let mut v: Vec<(&str, String)> = vec![
        ("RINGRUN_SECRET", job.secret.clone()),
        ("RINGRUN_RUN_ID", job.run_id.clone()),
        ("RINGRUN_NODE_ID", slot.node_id.to_string()),
        ("RINGRUN_BIND", slot.member_addr.ip().to_string()),
        ("RINGRUN_MEMBER_PORT", slot.member_addr.port().to_string()),
        ("RINGRUN_SEEDS", seeds.join(",")),
        ("RINGRUN_HOST", job.host.clone()),
        ("RINGRUN_LOCAL_RANK", slot.local_rank.to_string()),
        ("RINGRUN_LOCAL_WORLD_SIZE", job.local_world_size.to_string()),
        ("RINGRUN_MIN_SIZE", job.min_size.to_string()),
        ("RINGRUN_INITIAL_SIZE", job.world_size.to_string()),
        (
            "RINGRUN_MAX_SIZE",
            job.max_size.map(|m| m.to_string()).unwrap_or_default(),
        ),
        (
            "RINGRUN_CHECKPOINT_DIR",
            job.checkpoint_dir.clone().unwrap_or_default(),
        ),
        ("RINGRUN_TRANSPORT", job.transport.to_string()),
        ("RINGRUN_DEVICE", job.device.clone()),
        ("RANK", slot.rank.to_string()),
        ("LOCAL_RANK", slot.local_rank.to_string()),
        ("WORLD_SIZE", job.world_size.to_string()),
        ("LOCAL_WORLD_SIZE", job.local_world_size.to_string()),
        ("GROUP_RANK", job.group_rank.to_string()),
        ("GROUP_WORLD_SIZE", job.group_world_size.to_string()),
        ("ROLE_NAME", "default".into()),
        ("ROLE_RANK", slot.rank.to_string()),
        ("ROLE_WORLD_SIZE", job.world_size.to_string()),
        ("MASTER_ADDR", job.master.0.clone()),
        ("MASTER_PORT", job.master.1.to_string()),
        ("TORCHELASTIC_RESTART_COUNT", slot.restarts.to_string()),
        ("TORCHELASTIC_MAX_RESTARTS", job.max_restarts.to_string()),
        ("TORCHELASTIC_RUN_ID", job.run_id.clone()),
        ("TF_CONFIG", tf_config(&job.workers, slot.rank)),
    ];
    v.retain(|(_, value)| !value.is_empty());
    v.into_iter()
        .map(|(k, value)| (k.to_string(), value))
        .chain(job.extra.iter().cloned())
        .chain(job.inputs.iter().flat_map(|i| i.vars(slot.rank)))
        .collect()
}

/// `{"cluster": {"worker": [...]}, "task": {"type": "worker", "index": rank}}`.
fn tf_config(workers: &[SocketAddr], rank: usize) -> String {
    serde_json::json!({
        "cluster": { "worker": workers.iter().map(ToString::to_string).collect::<Vec<_>>() },
        "task": { "type": "worker", "index": rank },
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> JobEnv {
        JobEnv {
            run_id: "r1".into(),
            secret: "s".repeat(20),
            seeds: vec!["127.0.0.1:7000".parse().unwrap()],
            world_size: 2,
            local_world_size: 2,
            group_rank: 0,
            min_size: 1,
            max_size: None,
            master: ("127.0.0.1".into(), 29500),
            group_world_size: 1,
            max_restarts: 3,
            checkpoint_dir: None,
            transport: TransportKind::Auto,
            device: "cpu".into(),
            host: "h".into(),
            workers: vec![
                "127.0.0.1:7000".parse().unwrap(),
                "127.0.0.1:7001".parse().unwrap(),
            ],
            extra: vec![("RINGRUN_INITIAL_WAIT_MS".into(), "5000".into())],
            inputs: None,
        }
    }

    #[test]
    fn torchrun_and_tf_variables_are_set() {
        let slot = Slot {
            node_id: 1,
            local_rank: 1,
            rank: 1,
            member_addr: "127.0.0.1:7001".parse().unwrap(),
            restarts: 2,
        };
        let v: std::collections::BTreeMap<_, _> = vars(&job(), &slot).into_iter().collect();
        assert_eq!(v["RANK"], "1");
        assert_eq!(v["WORLD_SIZE"], "2");
        assert_eq!(v["MASTER_PORT"], "29500");
        assert_eq!(v["GROUP_WORLD_SIZE"], "1");
        assert_eq!(v["ROLE_RANK"], "1");
        assert_eq!(v["RINGRUN_INITIAL_WAIT_MS"], "5000");
        assert_eq!(v["TORCHELASTIC_RESTART_COUNT"], "2");
        assert_eq!(v["RINGRUN_MEMBER_PORT"], "7001");
        assert!(!v.contains_key("RINGRUN_MAX_SIZE"), "unset stays unset");
        let tf: serde_json::Value = serde_json::from_str(&v["TF_CONFIG"]).unwrap();
        assert_eq!(tf["task"]["index"], 1);
        assert_eq!(tf["cluster"]["worker"][1], "127.0.0.1:7001");
        assert_eq!(v["RINGRUN_TRANSPORT"], "auto");
        assert_eq!(v["RINGRUN_DEVICE"], "cpu");
        assert_eq!(v["RINGRUN_LOCAL_WORLD_SIZE"], "2");
        let nccl = JobEnv {
            transport: TransportKind::Nccl,
            ..job()
        };
        let v: std::collections::BTreeMap<_, _> = vars(&nccl, &slot).into_iter().collect();
        assert_eq!(v["RINGRUN_TRANSPORT"], "nccl");
    }
}
