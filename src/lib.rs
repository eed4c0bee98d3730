//! meshfs: all of a person's files, on every device, as one mounted drive.
//!
//! Layers, each importing only those to its right:
//! `cli` → `cloud` | `agent` → `crypto` → `proto`, and `cloud` → `relay` → `crypto`;
//! `agent` and `relay` bound their listeners' connections with `net`.
//! `cloud`, `relay` and `agent` never import each other's insides; they meet on the wire
//! types in `proto` (the cloud runs a relay by default).
#![forbid(unsafe_code, unused_must_use)]

pub mod agent;
pub mod cli;
pub mod cloud;
pub mod crypto;
pub mod net;
pub mod proto;
pub mod relay;
