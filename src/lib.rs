//! meshfs: all of a person's files, on every device, as one mounted drive.
//!
//! Layers, each importing only those to its right:
//! `cli` → `cloud` | `agent` → `crypto` → `proto`.
//! `cloud` and `agent` never import each other; they meet on the wire types in `proto`.
#![forbid(unsafe_code, unused_must_use)]

pub mod agent;
pub mod cli;
pub mod cloud;
pub mod crypto;
pub mod proto;
