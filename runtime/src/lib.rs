//! The elastic group: epochs, abort and re-form, state restore.
//!
//! Not written yet: see the elastic runtime issue. The crate exists so that the workspace has
//! the layout the design card fixes.
