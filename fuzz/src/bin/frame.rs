//! A peer's byte stream into a collective (frame headers, payloads, error frames).
fn main() {
    afl::fuzz!(|data: &[u8]| ringrun_fuzz::frame(data));
}
