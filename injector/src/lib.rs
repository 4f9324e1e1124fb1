//! lattice-injector: a mutating admission webhook that adds the lattice-proxy native sidecar
//! to opted-in pods — exactly what `deploy/components/sidecar` adds to a pod template.
//!
//! One module per job: [`settings`] (the ConfigMap and per-pod overrides), [`patch`] (which
//! pods, and the JSONPatch), [`review`] (AdmissionReview in and out), [`serve`] (HTTPS and
//! admin listeners), [`certs`] (the serving certificate), [`publish`] (the caBundle),
//! [`metrics`].

pub mod certs;
pub mod metrics;
pub mod patch;
pub mod publish;
pub mod review;
pub mod serve;
pub mod settings;
