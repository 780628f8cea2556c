//! A shared-memory segment's header, as a peer's file holds it (raw, or signed).
fn main() {
    afl::fuzz!(|data: &[u8]| ringrun_fuzz::shm_segment(data));
}
