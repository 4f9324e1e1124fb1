//! Bad configurations are refused at load with the place named.

use std::time::SystemTime;

use lattice_tests::{config::FileConfig, EmulatorConfig};
use serde_json::{json, Value};

fn base() -> Value {
    json!({
        "region": "us-west-2",
        "account_id": "111122223333",
        "tls_names": ["*.example.com"],
        "credentials": [{
            "access_key_id": "ASIAEXAMPLE1", "secret_access_key": "s1", "session_token": "t1",
            "role_name": "app-role", "session_name": "pod-1",
            "tags": {"eks-cluster-name": "eks-cluster1", "kubernetes-namespace": "apps"},
            "expires_in_secs": 3600
        }],
        "services": [{
            "name": "app1", "hosts": ["demo-cluster1.example.com"], "auth_type": "AWS_IAM",
            "auth_policy": {"Statement": [{"Effect": "Allow", "Principal": "*",
                "Action": "vpc-lattice-svcs:Invoke", "Resource": "*"}]},
            "routes": [{"path_prefix": "/", "target_group": "tg1"}]
        }],
        "target_groups": [{"name": "tg1", "targets": [{"address": "127.0.0.1:8090"}]}]
    })
}

fn compile(config: &Value) -> Result<(), String> {
    let config = EmulatorConfig::from_json_str(&config.to_string()).map_err(|e| e.to_string())?;
    config
        .compile(None, SystemTime::UNIX_EPOCH)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn expect_error(mutate: impl FnOnce(&mut Value), expected: &str) {
    let mut config = base();
    mutate(&mut config);
    let err = compile(&config).expect_err(expected);
    assert!(
        err.contains(expected),
        "error: {err}\nexpected to contain: {expected}"
    );
}

#[test]
fn the_base_configuration_is_valid() {
    compile(&base()).unwrap();
}

#[test]
fn bad_configurations_name_the_place() {
    expect_error(
        |c| c["account_id"] = json!("1234"),
        "account_id: '1234' is not a 12-digit account id",
    );
    expect_error(
        |c| c["region"] = json!("US West"),
        "region: 'US West' is not a region name",
    );
    expect_error(|c| c["unknown"] = json!(1), "unknown field `unknown`");
    expect_error(
        |c| c["services"][0]["routes"][0]["target_group"] = json!("tg2"),
        "services[0] \"app1\".routes[0].target_group: 'tg2' is not a target group",
    );
    expect_error(
        |c| c["services"][0]["routes"][0]["path_prefix"] = json!("api"),
        "services[0] \"app1\".routes[0].path_prefix: 'api' does not start with '/'",
    );
    expect_error(
        |c| c["services"][0]["hosts"] = json!(["demo.example.com:443"]),
        "services[0] \"app1\".hosts[0]: 'demo.example.com:443' is not a DNS name",
    );
    expect_error(
        |c| {
            let mut second = c["services"][0].clone();
            second["name"] = json!("app2");
            second["hosts"] = json!(["DEMO-CLUSTER1.example.com"]);
            c["services"].as_array_mut().unwrap().push(second);
        },
        "services[1] \"app2\".hosts[0]: 'DEMO-CLUSTER1.example.com' already belongs to another service",
    );
    expect_error(
        |c| c["services"][0]["auth_policy"]["Statement"][0]["Effect"] = json!("allow"),
        "services[0] \"app1\".auth_policy: Statement[0].Effect: \"allow\" is not an effect",
    );
    expect_error(
        |c| {
            c["services"][0]["auth_policy"]["Statement"][0]["Condition"] =
                json!({"StringEquals": {"aws:PrincipalTag/x": []}})
        },
        "services[0] \"app1\".auth_policy: Statement[0].Condition.StringEquals.aws:PrincipalTag/x: empty list",
    );
    expect_error(
        |c| c["services"][0]["auth_type"] = json!("NONE"),
        "services[0] \"app1\".auth_type: NONE with an auth policy",
    );
    expect_error(
        |c| c["services"][0]["auth_type"] = json!("IAM"),
        "unknown variant `IAM`",
    );
    expect_error(
        |c| c["services"][0]["id"] = json!("service-1"),
        "services[0] \"app1\".id: 'service-1' is not an id; expected 'svc-'",
    );
    expect_error(
        |c| c["services"][0]["routes"] = json!([]),
        "services[0] \"app1\".routes: no route",
    );
    expect_error(
        |c| c["target_groups"][0]["targets"] = json!([]),
        "target_groups[0] \"tg1\".targets: no target",
    );
    expect_error(
        |c| c["target_groups"][0]["targets"][0]["address"] = json!("localhost:80"),
        "invalid socket address syntax",
    );
    expect_error(
        |c| c["target_groups"][0]["targets"][0]["netns"] = json!("/run/netns/no-such-namespace-lattice-test"),
        "target_groups[0] \"tg1\".targets[0].netns: '/run/netns/no-such-namespace-lattice-test' does not exist",
    );
    expect_error(
        |c| c["credentials"][0]["expiration"] = json!("tomorrow"),
        "credentials[0].expires_in_secs: give expiration or expires_in_secs, not both",
    );
    expect_error(
        |c| {
            c["credentials"][0]["expires_in_secs"] = Value::Null;
            c["credentials"][0]["expiration"] = json!("tomorrow");
        },
        "credentials[0].expiration: 'tomorrow' is not an RFC 3339 time",
    );
    expect_error(
        |c| {
            let copy = c["credentials"][0].clone();
            c["credentials"].as_array_mut().unwrap().push(copy);
        },
        "credentials[1].access_key_id: 'ASIAEXAMPLE1' is listed twice",
    );
    expect_error(
        |c| c["source_vpcs"] = json!([{"id": "vpc-0abc", "cidrs": ["10.0.0.0/16", "10.0.0/8"]}]),
        "source_vpcs[0].cidrs[1]: '10.0.0/8' is not a CIDR block",
    );
    expect_error(
        |c| c["tls_names"] = json!(["*.*.example.com"]),
        "tls_names[0]: '*.*.example.com' is not a DNS name",
    );
}

#[test]
fn file_errors_name_the_file_and_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lattice.json");

    std::fs::write(
        &path,
        "{\n  \"listeners\": [\n    {\"address\": \"127.0.0.1:0\",}\n  ]\n}",
    )
    .unwrap();
    let err = FileConfig::load(&path, SystemTime::UNIX_EPOCH)
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with(&format!("{}, line 3, column", path.display())),
        "{err}"
    );

    // A policy file with an error: the service, the file and the statement are named.
    std::fs::write(
        dir.path().join("app1-policy.json"),
        r#"{"Statement": [{"Effect": "Allow", "Principal": "*", "Action": "*", "Resource": "*"},
                          {"Effect": "Deny", "Principal": "*", "Action": "*", "Resource": "*",
                           "Condition": {"ArnLike": {"aws:PrincipalArn": 5, "x": "y"}}}]}"#,
    )
    .unwrap();
    let mut emulator = base();
    emulator["services"][0]["auth_policy"] = Value::Null;
    emulator["services"][0]["auth_policy_file"] = json!("app1-policy.json");
    let file = json!({
        "listeners": [{"address": "127.0.0.1:0", "protocol": "https"}],
        "emulator": emulator,
    });
    std::fs::write(&path, file.to_string()).unwrap();
    let err = FileConfig::load(&path, SystemTime::UNIX_EPOCH)
        .unwrap_err()
        .to_string();
    let policy_path = dir.path().join("app1-policy.json");
    assert_eq!(
        err,
        format!(
            "{}: emulator.services[0] \"app1\".auth_policy_file '{}': Statement[1].Condition.ArnLike.x: \
             not a condition key; expected e.g. aws:PrincipalTag/<tag>",
            path.display(),
            policy_path.display()
        )
    );

    // A missing policy file.
    std::fs::remove_file(&policy_path).unwrap();
    let err = FileConfig::load(&path, SystemTime::UNIX_EPOCH)
        .unwrap_err()
        .to_string();
    assert!(err.contains("auth_policy_file: cannot read"), "{err}");

    // A pod identity agent for a key the emulator does not know.
    let mut file = file;
    file["emulator"]["services"][0]["auth_policy_file"] = Value::Null;
    file["pod_identity_agents"] =
        json!([{"address": "127.0.0.1:0", "token": "t", "access_key_id": "ASIANOTTHERE"}]);
    std::fs::write(&path, file.to_string()).unwrap();
    let err = FileConfig::load(&path, SystemTime::UNIX_EPOCH)
        .unwrap_err()
        .to_string();
    assert!(
        err.ends_with("pod_identity_agents[0].access_key_id: 'ASIANOTTHERE' is not in emulator.credentials; add it there so the emulator accepts what the agent hands out"),
        "{err}"
    );

    // And the binary exits 64 on a bad file, naming it.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lattice-emulator"))
        .args(["--check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("ASIANOTTHERE"));

    // Fixed, the binary accepts it.
    file["pod_identity_agents"] =
        json!([{"address": "127.0.0.1:0", "token": "t", "access_key_id": "ASIAEXAMPLE1"}]);
    std::fs::write(&path, file.to_string()).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lattice-emulator"))
        .args(["--check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
