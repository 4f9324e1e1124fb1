//! Tests of the Lattice emulator: SigV4 verdicts against botocore, policy evaluation,
//! configuration errors and end-to-end requests through TLS. One test binary for all of
//! them keeps link time down on small machines.

mod binary;
mod botocore;
mod config_errors;
mod end_to_end;
mod fixtures;
mod namespaces;
mod policy_eval;
mod sigv4_botocore;
