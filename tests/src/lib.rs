//! VPC Lattice emulator for lattice-egress's end-to-end tests and demo.
//!
//! It plays the part of Amazon VPC Lattice in front of local targets:
//! - HTTPS (HTTP/1.1 and HTTP/2 by ALPN) with a certificate from a private CA generated at
//!   start ([`tls`]), and plain HTTP;
//! - routing by host and path prefix to target groups, whose targets may sit in other network
//!   namespaces ([`target`], [`netns`]);
//! - SigV4 verification with Lattice's rules ([`sigv4`]) against a registry of access keys
//!   that stand for assumed-role sessions with EKS Pod Identity session tags
//!   ([`credentials`]);
//! - IAM auth policy evaluation for `vpc-lattice-svcs:Invoke` ([`policy`]);
//! - Lattice's own answers ([`respond`]) and `x-amzn-lattice-*` headers toward targets
//!   ([`server`]);
//! - a fake EKS Pod Identity agent handing out the registry's credentials
//!   ([`pod_identity`]);
//! - a fake Kubernetes API server serving Pods to the node agent's watch ([`kube_api`]).
//!
//! Start it in-process with [`start`] (or [`Emulator::new`] then [`Emulator::serve`]), or run
//! the `lattice-emulator` binary with a JSON [`FileConfig`]. The crate's README describes the
//! configuration file and the choices made where Lattice's behaviour is not observable.

#![warn(missing_docs)]

pub mod config;
pub mod credentials;
pub mod demo;
pub mod kube_api;
pub mod netns;
pub mod pod_identity;
pub mod policy;
pub mod respond;
pub mod server;
pub mod sigv4;
pub mod target;
pub mod tls;

pub use config::{EmulatorConfig, FileConfig, Protocol};
pub use server::{
    start, Clock, Emulator, EmulatorError, EmulatorHandle, EmulatorOptions, Listener,
};
