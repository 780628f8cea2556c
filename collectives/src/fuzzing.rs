//! Entry points for the coverage-guided fuzz targets (`fuzz/`) into decoders that are private
//! to their modules. Not part of the API: each takes attacker-controlled bytes and must
//! return, never panic, hang or allocate without bound.

use crate::transport::{
    auth::{HELLO_LEN, Hello, JobSecret},
    shm::segment,
};

/// The key the fuzz targets sign with, so that inputs get past authentication.
pub fn secret() -> JobSecret {
    JobSecret::from_bytes(b"ringrun fuzzing secret 0123456789")
}

/// A peer's handshake greeting (TCP's and QUIC's magic): decoded, or why not.
pub fn handshake_hello(bytes: &[u8]) -> Result<(u32, u32, u64), String> {
    let mut b = [0u8; HELLO_LEN];
    let n = bytes.len().min(HELLO_LEN);
    b[..n].copy_from_slice(&bytes[..n]);
    let _ = Hello::decode(*b"RRQ1", &b);
    Hello::decode(*b"RRT1", &b).map(|h| (h.world, h.rank, h.epoch))
}

/// A shared-memory segment's header as a peer's file holds it, `bytes` laid over the header
/// (signed with [`secret`] first when `sign`), in a file of `file_len` bytes: the mapping
/// length it asks for, or why it is refused.
pub fn shm_segment_header(bytes: &[u8], sign: bool, file_len: u64) -> Result<usize, String> {
    let name = "ringrun-1-000000000000000000000000";
    let mut header = [0u8; segment::HEADER_LEN];
    let n = bytes.len().min(header.len());
    header[..n].copy_from_slice(&bytes[..n]);
    if sign {
        let signed: &[u8; segment::SIGNED_LEN] =
            header[..segment::SIGNED_LEN].try_into().expect("length");
        header = segment::sign_header(signed, name, &secret());
    }
    segment::verify_header(&header, name, file_len, &secret()).map(|id| id.total_len())
}

/// A valid segment header's signed part (rank 0 of 2) and the length of its file: a seed.
pub fn shm_segment_example() -> (Vec<u8>, u64) {
    let id = segment::Identity {
        rank: 0,
        size: 2,
        epoch: 1,
        pid: 1,
        ring_bytes: 1 << 16,
        doorbell: [0; segment::DOORBELL_LEN],
        arena_bytes: 0,
    };
    (id.encode(&[0; 32]).to_vec(), id.total_len() as u64)
}

/// A valid TCP greeting (rank 1 of 2, epoch 3): a seed.
pub fn handshake_example() -> Vec<u8> {
    let hello = Hello {
        world: 2,
        rank: 1,
        epoch: 3,
    };
    hello.encode(*b"RRT1").to_vec()
}
