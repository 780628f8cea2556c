//! Multi-process tests of `ringrun bench` (written with the collectives issue).
