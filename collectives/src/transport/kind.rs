//! The transport choice, parsed here and nowhere else: `ringrun bench --transport`,
//! `ringrun launch --transport`, `RINGRUN_TRANSPORT` and the C ABI's config all read a
//! [`TransportKind`], so `auto` means one thing everywhere (see [`crate::links`]).

use std::{fmt, str::FromStr};

/// Which links carry a communicator's frames.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum TransportKind {
    /// Shared memory between ranks on one host, TCP between hosts, and the hierarchical
    /// allreduce when the ranks span hosts with several ranks on some (the default).
    #[default]
    Auto,
    /// TCP between every pair of ranks.
    Tcp,
    /// QUIC between every pair of ranks: every byte encrypted and authenticated.
    Quic,
    /// Shared memory between every pair of ranks: all of them on one host.
    Shm,
    /// NCCL for device buffers; the host-side links are `auto`'s.
    Nccl,
}

impl TransportKind {
    /// Every kind, in the order error messages list them.
    pub const ALL: [TransportKind; 5] = [
        TransportKind::Auto,
        TransportKind::Tcp,
        TransportKind::Quic,
        TransportKind::Shm,
        TransportKind::Nccl,
    ];

    /// The name the parser accepts.
    pub fn name(self) -> &'static str {
        match self {
            TransportKind::Auto => "auto",
            TransportKind::Tcp => "tcp",
            TransportKind::Quic => "quic",
            TransportKind::Shm => "shm",
            TransportKind::Nccl => "nccl",
        }
    }
}

impl fmt::Display for TransportKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A transport name that is none of [`TransportKind::ALL`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown transport {given:?}: expected one of auto, tcp, quic, shm, nccl")]
pub struct UnknownTransport {
    /// What was given.
    pub given: String,
}

impl FromStr for TransportKind {
    type Err = UnknownTransport;

    fn from_str(s: &str) -> Result<TransportKind, UnknownTransport> {
        let t = s.trim();
        TransportKind::ALL
            .into_iter()
            .find(|k| k.name().eq_ignore_ascii_case(t))
            .ok_or_else(|| UnknownTransport { given: s.into() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_parses_back_to_its_kind() {
        for k in TransportKind::ALL {
            assert_eq!(k.name().parse::<TransportKind>(), Ok(k));
            assert_eq!(k.to_string().to_uppercase().parse::<TransportKind>(), Ok(k));
        }
        assert_eq!(TransportKind::default(), TransportKind::Auto);
    }

    #[test]
    fn an_unknown_name_lists_the_valid_ones() {
        let e = "infiniband".parse::<TransportKind>().unwrap_err();
        let text = e.to_string();
        assert!(text.contains("\"infiniband\""), "{text}");
        for k in TransportKind::ALL {
            assert!(text.contains(k.name()), "{text} lacks {k}");
        }
        assert!("".parse::<TransportKind>().is_err());
    }
}
