//! In-memory transport: every pair of ranks joined by a `tokio::io::duplex` pipe.
//!
//! For tests and simulation: all ranks can run as futures on one current-thread runtime, and
//! dropping a rank's transport closes its pipes, which its peers see as [`PeerLost`].
//!
//! [`PeerLost`]: crate::CollectiveError::PeerLost

use tokio::io::{DuplexStream, ReadHalf, WriteHalf};

use super::stream::{Link, StreamTransport};

/// One rank's end of an in-memory mesh.
pub type MemTransport = StreamTransport<ReadHalf<DuplexStream>, WriteHalf<DuplexStream>>;

/// Builds `n` fully connected ranks; each pipe buffers `pipe_bytes` per direction.
pub fn mesh(n: usize, pipe_bytes: usize) -> Vec<MemTransport> {
    let mut links: Vec<Vec<Option<Link<_, _>>>> =
        (0..n).map(|_| (0..n).map(|_| None).collect()).collect();
    let pairs = (0..n).flat_map(|i| (i + 1..n).map(move |j| (i, j)));
    for (i, j) in pairs {
        let (a, b) = tokio::io::duplex(pipe_bytes);
        let (ar, aw) = tokio::io::split(a);
        let (br, bw) = tokio::io::split(b);
        links[i][j] = Some(Link {
            reader: ar,
            writer: aw,
        });
        links[j][i] = Some(Link {
            reader: br,
            writer: bw,
        });
    }
    links
        .into_iter()
        .enumerate()
        .map(|(rank, l)| StreamTransport::new(rank, l, None))
        .collect()
}
