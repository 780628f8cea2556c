//! Home of the criterion suites in `suites/`; no library code.
