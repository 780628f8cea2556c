//! Job-secret authentication (written next).
