//! The wire frame: a fixed 48-byte header, then `len` payload bytes.
//!
//! Every data frame names the operation it belongs to (epoch, op id, collective, dtype, op,
//! algorithm, element count, root) and its position on its link (`seq`). The receiver knows what
//! it expects next from each peer and compares field by field, so ranks that disagree about a
//! call get [`Mismatch`](crate::CollectiveError::Mismatch) instead of reducing foreign bytes.
//! An error frame carries a code and a message; a rank that gives up on an operation sends one
//! to its peers so that they fail at once instead of waiting for their deadline.
//!
//! Layout (little endian): magic `RRF1` | kind u8 | collective u8 | dtype u8 | op u8 | algo u8 |
//! 3 reserved | seq u32 | epoch u64 | op id u64 | count u64 | root u32 | len u32.

use crate::dtype::{DType, ReduceOp};

/// Bytes in a frame header.
pub const HEADER_LEN: usize = 48;
const MAGIC: [u8; 4] = *b"RRF1";

/// Which collective an operation is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Collective {
    /// Allreduce.
    AllReduce = 1,
    /// Broadcast from a root.
    Broadcast = 2,
    /// Allgather.
    AllGather = 3,
    /// Reduce-scatter.
    ReduceScatter = 4,
    /// Barrier.
    Barrier = 5,
    /// All-to-all of equal blocks.
    AllToAll = 6,
}

/// The algorithm that runs a collective; all ranks must pick the same one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Algo {
    /// Bandwidth-optimal ring (reduce-scatter + allgather), chunked and pipelined.
    Ring = 1,
    /// Latency-optimal recursive doubling (log2 n rounds of whole-buffer exchange).
    RecursiveDoubling = 2,
    /// Deterministic: each chunk is reduced by its owner in rank order, then gathered.
    Direct = 3,
    /// Binomial tree (broadcast of small buffers).
    Tree = 4,
    /// Pipelined chain (broadcast of large buffers).
    Chain = 5,
    /// Dissemination barrier.
    Dissemination = 6,
    /// Rabenseifner: reduce-scatter by recursive halving, allgather by recursive doubling.
    HalvingDoubling = 7,
    /// Through the shared-memory arena of one host: stage, barrier, reduce (see `algo::arena`).
    Arena = 8,
}

impl Algo {
    const ALL: [Algo; 8] = [
        Algo::Ring,
        Algo::RecursiveDoubling,
        Algo::Direct,
        Algo::Tree,
        Algo::Chain,
        Algo::Dissemination,
        Algo::HalvingDoubling,
        Algo::Arena,
    ];

    /// A short name for reports (`ring`, `rd`, ...).
    pub const fn name(self) -> &'static str {
        match self {
            Algo::Ring => "ring",
            Algo::RecursiveDoubling => "rd",
            Algo::Direct => "direct",
            Algo::Tree => "tree",
            Algo::Chain => "chain",
            Algo::Dissemination => "dissemination",
            Algo::HalvingDoubling => "hd",
            Algo::Arena => "arena",
        }
    }

    fn from_code(c: u8) -> Option<Algo> {
        Algo::ALL.into_iter().find(|a| *a as u8 == c)
    }
}

impl Collective {
    fn from_code(c: u8) -> Option<Collective> {
        use Collective::*;
        [
            AllReduce,
            Broadcast,
            AllGather,
            ReduceScatter,
            Barrier,
            AllToAll,
        ]
        .into_iter()
        .find(|k| *k as u8 == c)
    }
}

/// What every rank must agree on for one operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpSig {
    /// The collective.
    pub coll: Collective,
    /// Element type.
    pub dtype: DType,
    /// Reduce op (`Sum` for collectives that do not reduce).
    pub op: ReduceOp,
    /// Algorithm.
    pub algo: Algo,
    /// Elements: the whole buffer for allreduce and broadcast, one rank's block for allgather
    /// and reduce-scatter.
    pub count: u64,
    /// Root rank (broadcast), else 0.
    pub root: u32,
}

/// Data or error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    /// A piece of an operation's data.
    Data = 1,
    /// The sender gave up on the operation; the payload is an [`ErrorCode`] byte and a message.
    Error = 2,
}

/// Why a peer gave up, carried in an error frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ErrorCode {
    /// The peer found a mismatch.
    Mismatch = 1,
    /// The peer was cancelled or timed out.
    Aborted = 2,
    /// The peer lost the connection to the rank named in the payload.
    PeerLost = 3,
}

/// A decoded frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Data or error.
    pub kind: FrameKind,
    /// Epoch of the communicator that sent it.
    pub epoch: u64,
    /// Sequence number of the operation within the epoch.
    pub op_id: u64,
    /// The operation's signature.
    pub sig: OpSig,
    /// Position of this frame among the operation's frames on this link.
    pub seq: u32,
    /// Payload bytes that follow.
    pub len: u32,
}

impl Header {
    /// Encodes into the fixed wire layout.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(&MAGIC);
        b[4] = self.kind as u8;
        b[5] = self.sig.coll as u8;
        b[6] = self.sig.dtype as u8;
        b[7] = self.sig.op as u8;
        b[8] = self.sig.algo as u8;
        b[12..16].copy_from_slice(&self.seq.to_le_bytes());
        b[16..24].copy_from_slice(&self.epoch.to_le_bytes());
        b[24..32].copy_from_slice(&self.op_id.to_le_bytes());
        b[32..40].copy_from_slice(&self.sig.count.to_le_bytes());
        b[40..44].copy_from_slice(&self.sig.root.to_le_bytes());
        b[44..48].copy_from_slice(&self.len.to_le_bytes());
        b
    }

    /// Decodes, rejecting anything that is not a well-formed header.
    pub fn decode(b: &[u8; HEADER_LEN]) -> Result<Header, String> {
        if b[0..4] != MAGIC {
            return Err(format!("bad magic {:02x?}", &b[0..4]));
        }
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        let kind = match b[4] {
            1 => FrameKind::Data,
            2 => FrameKind::Error,
            k => return Err(format!("bad frame kind {k}")),
        };
        let sig = OpSig {
            coll: Collective::from_code(b[5]).ok_or_else(|| format!("bad collective {}", b[5]))?,
            dtype: DType::from_code(b[6]).ok_or_else(|| format!("bad dtype {}", b[6]))?,
            op: ReduceOp::from_code(b[7]).ok_or_else(|| format!("bad op {}", b[7]))?,
            algo: Algo::from_code(b[8]).ok_or_else(|| format!("bad algorithm {}", b[8]))?,
            count: u64_at(32),
            root: u32_at(40),
        };
        Ok(Header {
            kind,
            epoch: u64_at(16),
            op_id: u64_at(24),
            sig,
            seq: u32_at(12),
            len: u32_at(44),
        })
    }

    /// Compares a received data header with the expected one; `Err` says what differs first.
    pub fn check(expect: &Header, got: &Header) -> Result<(), String> {
        // The common case, without building the field-by-field report (it allocates).
        if (
            expect.epoch,
            expect.op_id,
            expect.sig,
            expect.len,
            expect.seq,
        ) == (got.epoch, got.op_id, got.sig, got.len, got.seq)
        {
            return Ok(());
        }
        let (e, g) = (&expect.sig, &got.sig);
        let fields: [(&str, String, String); 9] = [
            ("epoch", expect.epoch.to_string(), got.epoch.to_string()),
            (
                "operation id",
                expect.op_id.to_string(),
                got.op_id.to_string(),
            ),
            (
                "collective",
                format!("{:?}", e.coll),
                format!("{:?}", g.coll),
            ),
            (
                "dtype",
                e.dtype.nccl_name().into(),
                g.dtype.nccl_name().into(),
            ),
            (
                "reduce op",
                e.op.nccl_name().into(),
                g.op.nccl_name().into(),
            ),
            ("element count", e.count.to_string(), g.count.to_string()),
            ("root", e.root.to_string(), g.root.to_string()),
            ("algorithm", e.algo.name().into(), g.algo.name().into()),
            ("frame length", expect.len.to_string(), got.len.to_string()),
        ];
        if let Some((what, mine, theirs)) = fields.into_iter().find(|(_, a, b)| a != b) {
            return Err(format!(
                "{what}: this rank has {mine}, the peer sent {theirs}"
            ));
        }
        if expect.seq != got.seq {
            return Err(format!(
                "frame {} arrived where {} was due",
                got.seq, expect.seq
            ));
        }
        Ok(())
    }
}

/// Encodes an error frame's payload: code, the rank it is about (`u32::MAX` for none), message.
pub fn error_payload(code: ErrorCode, subject: Option<usize>, message: &str) -> Vec<u8> {
    let mut p = Vec::with_capacity(5 + message.len());
    p.push(code as u8);
    p.extend_from_slice(&subject.map_or(u32::MAX, |r| r as u32).to_le_bytes());
    p.extend_from_slice(message.as_bytes());
    p.truncate(MAX_ERROR_PAYLOAD as usize);
    p
}

/// Decodes an error frame's payload; unknown codes read as `Aborted`.
pub fn parse_error_payload(p: &[u8]) -> (ErrorCode, Option<usize>, String) {
    let code = match p.first() {
        Some(1) => ErrorCode::Mismatch,
        Some(3) => ErrorCode::PeerLost,
        _ => ErrorCode::Aborted,
    };
    let subject = p
        .get(1..5)
        .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
        .filter(|r| *r != u32::MAX)
        .map(|r| r as usize);
    let message = String::from_utf8_lossy(p.get(5..).unwrap_or_default()).into_owned();
    (code, subject, message)
}

/// Longest error message accepted from a peer.
pub const MAX_ERROR_PAYLOAD: u32 = 4096;

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn header() -> Header {
        Header {
            kind: FrameKind::Data,
            epoch: 7,
            op_id: 42,
            sig: OpSig {
                coll: Collective::AllReduce,
                dtype: DType::BF16,
                op: ReduceOp::Max,
                algo: Algo::Ring,
                count: 1 << 40,
                root: 3,
            },
            seq: 9,
            len: 65536,
        }
    }

    #[test]
    fn round_trip() {
        let h = header();
        assert_eq!(Header::decode(&h.encode()), Ok(h));
    }

    #[test]
    fn check_names_first_difference() {
        let (a, mut b) = (header(), header());
        b.sig.count += 1;
        let e = Header::check(&a, &b).unwrap_err();
        assert!(e.starts_with("element count"), "{e}");
        b = a;
        b.seq = 10;
        assert!(Header::check(&a, &b).unwrap_err().contains("frame 10"));
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), HEADER_LEN)) {
            let b: [u8; HEADER_LEN] = bytes.try_into().unwrap();
            if let Ok(h) = Header::decode(&b) {
                prop_assert_eq!(Header::decode(&h.encode()), Ok(h));
            }
        }
    }
}
