//! Criterion suites (written with the collectives issue).

fn main() {}
