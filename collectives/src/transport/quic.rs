//! QUIC transport (written next).
