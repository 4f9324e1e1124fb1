//! Shared test data: a fixed signing time, access keys and identities.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, SystemTime},
};

use lattice_tests::credentials::{CredentialsRegistry, Identity, StoredCredential};

pub const REGION: &str = "us-west-2";
pub const ACCOUNT: &str = "111122223333";
/// The time every test request is signed at: 2024-01-02T03:04:05Z.
pub const AMZ_DATE: &str = "20240102T030405Z";

pub fn signed_at() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_704_164_645)
}

pub const TEMP_KEY: &str = "ASIAEXAMPLECLUSTER2";
pub const TEMP_SECRET: &str = "tempSecret/Key+Example2";
pub const TEMP_TOKEN: &str = "IQoJb3JpZ2luX2VjEXAMPLE//token+with=chars";
pub const LONG_KEY: &str = "AKIAEXAMPLELONGTERM";
pub const LONG_SECRET: &str = "longTermSecretExample";
pub const EXPIRED_KEY: &str = "ASIAEXAMPLEEXPIRED";
pub const EXPIRED_SECRET: &str = "expiredSecretExample";
pub const EXPIRED_TOKEN: &str = "expiredToken";

pub fn pod_identity(cluster: &str, namespace: &str) -> Identity {
    let tags: BTreeMap<String, String> = [
        ("eks-cluster-name", cluster),
        ("kubernetes-namespace", namespace),
        ("kubernetes-service-account", "default"),
        ("kubernetes-pod-name", "demo-pod"),
        ("kubernetes-pod-uid", "0f3c9b1e-1111-2222-3333-444455556666"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    Identity {
        account_id: ACCOUNT.to_owned(),
        role_name: format!("{cluster}-app-role"),
        role_path: "/".to_owned(),
        session_name: format!("eks-{cluster}-demo-pod-0f3c9b1e"),
        tags,
    }
}

pub fn registry() -> CredentialsRegistry {
    let mut registry = CredentialsRegistry::new();
    registry.insert(StoredCredential {
        access_key_id: TEMP_KEY.to_owned(),
        secret_access_key: TEMP_SECRET.to_owned(),
        session_token: Some(TEMP_TOKEN.to_owned()),
        expiration: Some(signed_at() + Duration::from_secs(3600)),
        identity: Arc::new(pod_identity("eks-cluster2", "apps")),
    });
    registry.insert(StoredCredential {
        access_key_id: LONG_KEY.to_owned(),
        secret_access_key: LONG_SECRET.to_owned(),
        session_token: None,
        expiration: None,
        identity: Arc::new(pod_identity("eks-cluster1", "apps")),
    });
    registry.insert(StoredCredential {
        access_key_id: EXPIRED_KEY.to_owned(),
        secret_access_key: EXPIRED_SECRET.to_owned(),
        session_token: Some(EXPIRED_TOKEN.to_owned()),
        expiration: Some(signed_at() - Duration::from_secs(1)),
        identity: Arc::new(pod_identity("eks-cluster1", "apps")),
    });
    registry
}
