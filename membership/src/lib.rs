//! SWIM membership for ringrun jobs, built on `foca`.
//!
//! Not written yet: see the membership issue. The crate exists so that the workspace has the
//! layout the design card fixes.
