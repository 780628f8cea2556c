//! A transport handshake greeting (TCP's and QUIC's).
fn main() {
    afl::fuzz!(|data: &[u8]| ringrun_fuzz::handshake(data));
}
