//! A control datagram (agreement, exit, report, completion): raw, or sealed with the job's key.
fn main() {
    afl::fuzz!(|data: &[u8]| ringrun_fuzz::control(data));
}
