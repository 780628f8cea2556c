//! A datagram at a SWIM member: raw, or sealed with the job's key (foca's decoding).
fn main() {
    afl::fuzz!(|data: &[u8]| ringrun_fuzz::membership(data));
}
