//! The links of one epoch: the TCP mesh on the member's advertised listener (the only address
//! the view carries; its connections come through the `Acceptor`), authenticated with the job secret, then whatever the group's
//! [`TransportKind`] makes of it for this epoch's layout (`collectives::links`): under `auto`,
//! shared memory among the members on one host, TCP across hosts, hierarchical allreduce when
//! the epoch spans hosts with several members on some. The layout is learnt afresh every
//! epoch, since a host can lose or gain members between epochs.

use std::time::Instant;

use ringrun_collectives::{
    CollectiveError, CommConfig, LayoutComm,
    links::{self, HostLabel, LinkSpec},
    transport::{
        TransportKind,
        shm::ShmConfig,
        tcp::{self, JobSecret, MeshSpec},
    },
};

use crate::acceptor::Acceptor;

/// What forming an epoch's links needs besides the view.
pub struct MeshConfig<'a> {
    /// The links asked for.
    pub kind: TransportKind,
    /// The job secret.
    pub secret: &'a JobSecret,
    /// This member's host name (`RINGRUN_HOST`): members with one name on one machine share
    /// memory.
    pub host: &'a str,
    /// The collectives' tuning, before it is fitted to the members on this host.
    pub comm: &'a CommConfig,
}

/// Forms the links of `spec`'s epoch by `deadline`, and the communicator over them.
pub(crate) async fn connect(
    acceptor: &Acceptor,
    spec: &MeshSpec,
    config: &MeshConfig<'_>,
    deadline: Instant,
) -> Result<LayoutComm, CollectiveError> {
    let boot = tcp::connect_accepting(|| acceptor.next(), spec, config.secret, deadline).await?;
    let ip = acceptor.local_addr().ip();
    let shm = ShmConfig {
        spin: config.comm.spin,
        ..ShmConfig::default()
    };
    let link_spec = LinkSpec {
        kind: config.kind,
        mesh: spec,
        secret: config.secret,
        shm,
        host: HostLabel::Name(config.host.to_string()),
        quic_ip: ip,
        deadline,
    };
    let (links, layout) = links::connect(boot, &link_spec).await?;
    let comm = config.comm.clone().for_local_ranks(layout.local().len());
    Ok(LayoutComm::new(links, layout, spec.epoch, comm))
}
