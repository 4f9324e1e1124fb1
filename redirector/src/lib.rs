//! lattice-redirector: the node agent that loads, attaches and pins the eBPF programs which
//! send connects toward VPC Lattice to each pod's lattice-proxy, decides which cgroups are
//! enrolled, and reports status and metrics.

pub mod admin;
pub mod agent;
pub mod config;
pub mod doctor;
pub mod enroll;
pub mod error;
pub mod host;
pub mod install;
pub mod kubelet;
pub mod logs;
pub mod maps;
pub mod pins;
pub mod pods;
pub mod reload;
pub mod status;
mod sys;
pub mod watch;

pub use error::{Error, Result};
