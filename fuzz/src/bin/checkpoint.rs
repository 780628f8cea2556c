//! A checkpoint file's bytes, as read from disk (raw, or with a valid checksum).
fn main() {
    afl::fuzz!(|data: &[u8]| ringrun_fuzz::checkpoint(data));
}
