//! Tuned configuration and the detection bound derived from it.
//!
//! Trade-off: a failure is noticed after about one probe period (someone probes the dead
//! member), the probe timeout plus the rest of that period (direct and indirect probes fail),
//! the suspicion timeout (time for a live but slow member to refute), and a few gossip rounds
//! (the `Down` spreads). HashiCorp memberlist's LAN profile (1 s period, 500 ms timeout,
//! suspicion multiplier 4) detects in about 5 s and tolerates multi-second stalls; ULFM-style
//! detectors with heartbeats every few ms go down to about 100 ms but declare a member dead
//! after a ~100 ms stall. The defaults here (100 ms period, 40 ms probe timeout, 300 ms
//! suspicion) detect a SIGKILLed member in well under 1 s on a LAN and only declare a live
//! member dead if it stalls for more than about 400 ms and cannot refute within the suspicion
//! window. Raise `suspicion_timeout` on hosts where processes can stall longer (GC, swap,
//! oversubscribed CPUs); every extra 100 ms there adds 100 ms to detection.

use std::num::{NonZeroU8, NonZeroUsize};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::MembershipError;
use crate::identity::MAX_IDENTITY_LEN;
use crate::wire::OVERHEAD;

/// Membership protocol parameters. All members of a job must use the same values.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipConfig {
    /// Interval between two probes of a member by this node (SWIM protocol period).
    pub probe_period: Duration,
    /// How long a direct ping waits for its ack before indirect probes start; must be shorter
    /// than `probe_period` (indirect acks are accepted until the period ends).
    pub probe_timeout: Duration,
    /// How long a member stays suspect before the suspecting node declares it down.
    pub suspicion_timeout: Duration,
    /// Members asked to probe indirectly when a direct probe times out (also the fan-out of a
    /// refutation gossip).
    pub indirect_probes: usize,
    /// How many times each membership update is piggybacked before it is dropped. foca's LAN
    /// preset uses `4 log10(n+1)` (6 for 50 members), which lets rare `Down` updates die out
    /// before they reach everyone; 12 removes that tail for about 40 % more packets.
    pub max_transmissions: u8,
    /// Period of the extra gossip rounds that run while there are updates to spread.
    pub gossip_interval: Duration,
    /// Members contacted per gossip round.
    pub gossip_fanout: usize,
    /// Period of the announce to one random active member (repairs divergent views).
    pub announce_interval: Duration,
    /// Period of the announce to two members believed down; this is how the two sides of a
    /// healed partition, or a wrongly downed member, find each other again.
    pub down_announce_interval: Duration,
    /// Period of the announce to one random seed (repairs a split that outlived
    /// `remove_down_after`, and rejoins an isolated node).
    pub seed_announce_interval: Duration,
    /// How long a down member is remembered (a restarted member with the same address and a
    /// newer incarnation replaces it at any time).
    pub remove_down_after: Duration,
    /// Largest datagram sent or accepted, authentication overhead included.
    pub max_packet_size: usize,
    /// The node's watchdog re-announces to the seeds if no probe round ran for this many probe
    /// periods while it believes it is part of a cluster (foca's rare stuck-after-rejoin state).
    pub watchdog_periods: u32,
}

impl Default for MembershipConfig {
    fn default() -> Self {
        Self::lan()
    }
}

impl MembershipConfig {
    /// The tuned LAN defaults (see the module docs for the trade-off).
    pub const fn lan() -> Self {
        Self {
            probe_period: Duration::from_millis(100),
            probe_timeout: Duration::from_millis(40),
            suspicion_timeout: Duration::from_millis(300),
            indirect_probes: 3,
            max_transmissions: 12,
            gossip_interval: Duration::from_millis(50),
            gossip_fanout: 3,
            announce_interval: Duration::from_secs(10),
            down_announce_interval: Duration::from_secs(1),
            seed_announce_interval: Duration::from_secs(5),
            remove_down_after: Duration::from_secs(30),
            max_packet_size: 1400,
            watchdog_periods: 10,
        }
    }

    /// A bound on the time from a crash until every live member has declared the crashed
    /// member down, for a cluster of `members` members on a network with sub-millisecond
    /// latency and at most 5 % loss.
    ///
    /// Derivation: with `n - 1` probers picking targets in shuffled round-robin, a given member
    /// escapes probing for `k` periods with probability about `e^-k`; we allow
    /// `2 + log2(n)` periods for the first failed probe and one more for it to be acted on,
    /// then the probe timeout and the suspicion timeout, then `2 log2(n) + 4` gossip rounds for
    /// the `Down` to reach everyone (epidemic spread with fan-out 3 needs about `log3(n)`
    /// rounds; the factor covers loss).
    pub fn detection_bound(&self, members: usize) -> Duration {
        let log2 = (members.max(2) as f64).log2().ceil() as u32;
        self.probe_period * (3 + log2)
            + self.probe_timeout
            + self.suspicion_timeout
            + self.gossip_interval * (2 * log2 + 4)
    }

    /// A bound on the time for views to converge after a partition heals: one announce to a
    /// downed member, a rejoin, and its dissemination.
    pub fn convergence_bound(&self, members: usize) -> Duration {
        2 * self.down_announce_interval + 2 * self.detection_bound(members)
    }

    /// Checks consistency. Does not change anything.
    pub fn validate(&self) -> Result<(), MembershipError> {
        if self.probe_period.is_zero() || self.probe_timeout >= self.probe_period {
            return Err(MembershipError::InvalidConfig(
                "probe_timeout must be positive and shorter than probe_period",
            ));
        }
        if self.indirect_probes == 0 || self.gossip_fanout == 0 || self.max_transmissions == 0 {
            return Err(MembershipError::InvalidConfig(
                "indirect_probes, gossip_fanout and max_transmissions must be positive",
            ));
        }
        if self.gossip_interval.is_zero()
            || self.announce_interval.is_zero()
            || self.down_announce_interval.is_zero()
            || self.seed_announce_interval.is_zero()
        {
            return Err(MembershipError::InvalidConfig("intervals must be positive"));
        }
        if self.max_packet_size < OVERHEAD + 3 * MAX_IDENTITY_LEN || self.max_packet_size > 65_000 {
            return Err(MembershipError::InvalidConfig(
                "max_packet_size must hold a header with two identities and fit a UDP datagram",
            ));
        }
        if self.watchdog_periods < 2 {
            return Err(MembershipError::InvalidConfig(
                "watchdog_periods must be >= 2",
            ));
        }
        Ok(())
    }

    /// The foca configuration these parameters map to.
    pub(crate) fn to_foca(&self) -> foca::Config {
        let nz = |v: usize| NonZeroUsize::new(v.max(1)).unwrap_or(NonZeroUsize::MIN);
        foca::Config {
            probe_period: self.probe_period,
            probe_rtt: self.probe_timeout,
            num_indirect_probes: nz(self.indirect_probes),
            max_transmissions: NonZeroU8::new(self.max_transmissions).unwrap_or(NonZeroU8::MIN),
            suspect_to_down_after: self.suspicion_timeout,
            remove_down_after: Some(self.remove_down_after),
            max_packet_size: nz(self.max_packet_size - OVERHEAD),
            notify_down_members: true,
            periodic_announce: Some(foca::PeriodicParams {
                frequency: self.announce_interval,
                num_members: nz(1),
            }),
            periodic_announce_to_down_members: Some(foca::PeriodicParams {
                frequency: self.down_announce_interval,
                num_members: nz(2),
            }),
            periodic_gossip: Some(foca::PeriodicParams {
                frequency: self.gossip_interval,
                num_members: nz(self.gossip_fanout),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_fast() {
        let config = MembershipConfig::default();
        config.validate().unwrap();
        // The target: a dead member detected within about 1 s on a small LAN cluster.
        let typical = config.probe_period * 2 + config.probe_timeout + config.suspicion_timeout;
        assert!(typical < Duration::from_secs(1));
        assert!(config.detection_bound(8) < Duration::from_millis(1600));
    }

    #[test]
    fn bad_configs_are_rejected() {
        let mut config = MembershipConfig::lan();
        config.probe_timeout = config.probe_period;
        assert!(config.validate().is_err());
        let mut config = MembershipConfig::lan();
        config.max_packet_size = 100;
        assert!(config.validate().is_err());
    }
}
