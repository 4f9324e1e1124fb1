//! The emulator's view of IAM: which access key belongs to which assumed-role session.
//!
//! Each access key maps to the identity that EKS Pod Identity would have produced: a role
//! session in an account, with the session tags that Pod Identity attaches
//! (`eks-cluster-name`, `kubernetes-namespace`, `kubernetes-service-account`,
//! `kubernetes-pod-name`, `kubernetes-pod-uid`), and an expiry.

use std::{collections::BTreeMap, collections::HashMap, sync::Arc, time::SystemTime};

use time::OffsetDateTime;

/// The principal behind an access key: an assumed-role session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// 12-digit account id.
    pub account_id: String,
    /// Role name (without path).
    pub role_name: String,
    /// Role path, `/` by default; appears in the role ARN only.
    pub role_path: String,
    /// Role session name.
    pub session_name: String,
    /// Session tags, visible to policies as `aws:PrincipalTag/<key>`.
    pub tags: BTreeMap<String, String>,
}

impl Identity {
    /// `arn:aws:sts::<acct>:assumed-role/<role>/<session>`: the caller as Lattice names it.
    pub fn assumed_role_arn(&self) -> String {
        format!(
            "arn:aws:sts::{}:assumed-role/{}/{}",
            self.account_id, self.role_name, self.session_name
        )
    }

    /// `arn:aws:iam::<acct>:role<path><role>`: the value of `aws:PrincipalArn`.
    pub fn role_arn(&self) -> String {
        format!(
            "arn:aws:iam::{}:role{}{}",
            self.account_id, self.role_path, self.role_name
        )
    }
}

/// One access key as the registry stores it.
#[derive(Debug, Clone)]
pub struct StoredCredential {
    /// Access key id (`ASIA…` for temporary credentials).
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: String,
    /// Session token that must accompany temporary credentials.
    pub session_token: Option<String>,
    /// When the credentials stop being accepted; `None` never expires.
    pub expiration: Option<SystemTime>,
    /// Who signs with this key.
    pub identity: Arc<Identity>,
}

impl StoredCredential {
    /// Whether the credentials are expired at `now`.
    pub fn is_expired(&self, now: SystemTime) -> bool {
        self.expiration.is_some_and(|e| e <= now)
    }

    /// Expiration as RFC 3339 (`2024-01-01T00:00:00Z`), as the EKS Pod Identity agent writes it.
    pub fn expiration_rfc3339(&self) -> Option<String> {
        self.expiration.map(|e| {
            OffsetDateTime::from(e)
                .replace_nanosecond(0)
                .unwrap_or(OffsetDateTime::from(e))
                .format(&time::format_description::well_known::Rfc3339)
                .expect("a UTC time always formats as RFC 3339")
        })
    }
}

/// Access keys known to the emulator.
#[derive(Debug, Clone, Default)]
pub struct CredentialsRegistry {
    by_key: HashMap<String, StoredCredential>,
}

impl CredentialsRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces a credential.
    pub fn insert(&mut self, credential: StoredCredential) {
        self.by_key
            .insert(credential.access_key_id.clone(), credential);
    }

    /// Looks up an access key.
    pub fn get(&self, access_key_id: &str) -> Option<&StoredCredential> {
        self.by_key.get(access_key_id)
    }

    /// Number of access keys.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// Whether the registry has no access key.
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
}
