//! lattice-proxy: the SigV4-signing, TLS-originating sidecar for Amazon VPC Lattice.
//!
//! An application sends plain HTTP/1.1 (or h2c) to a Lattice service name; the redirector
//! delivers the connection here; the proxy checks the host against an allow-list, signs the
//! request with SigV4 for `vpc-lattice-svcs`, and forwards it over TLS on a pooled connection.
//! Lattice's answer goes back unchanged.
//!
//! The crate is flat on purpose (one module per step): [`config`] turns flags into a
//! [`config::Config`], [`server`] accepts connections, [`proxy`] handles one request
//! (check host → rewrite URI → strip hop-by-hop → sign → forward), [`allow`], [`sign`],
//! [`credentials`], [`upstream`] and [`trust`] implement the steps, [`error`] is the one place where
//! failures become responses, [`admin`] and [`metrics`] serve operations.

#![deny(missing_docs)]

pub mod admin;
pub mod allow;
pub mod body;
pub mod config;
pub mod credentials;
pub mod deadline;
pub mod error;
pub mod metrics;
pub mod orig_dst;
pub mod pca;
pub mod pool;
pub mod proxy;
pub mod redirect_check;
pub mod server;
pub mod sign;
pub mod trust;
pub mod upstream;
