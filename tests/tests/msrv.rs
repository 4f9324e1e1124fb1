//! `rust-version` is the real floor of the lock file: the highest `rust-version` any
//! resolved dependency declares, and every workspace crate inherits it. (A compile with
//! exactly that toolchain, `cargo +1.94.1 check`, cannot run here: the machines have one
//! toolchain, 1.95.0, and nightly, and fetch no other.)

use std::process::Command;

fn version(v: &str) -> Vec<u32> {
    v.split('.').map(|p| p.parse().unwrap()).collect()
}

#[test]
fn rust_version_is_the_lock_files_floor_and_every_crate_inherits_it() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap();
    let out = Command::new(env!("CARGO"))
        .current_dir(root)
        .args(["metadata", "--format-version", "1", "--locked"])
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "cargo metadata --locked failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let members: Vec<&str> = meta["workspace_members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    let packages = meta["packages"].as_array().unwrap();
    let (ours, deps): (Vec<&serde_json::Value>, Vec<&serde_json::Value>) = packages
        .iter()
        .partition(|p| members.contains(&p["id"].as_str().unwrap()));
    let floor = deps
        .iter()
        .filter_map(|p| Some((version(p["rust_version"].as_str()?), p["name"].as_str()?)))
        .max()
        .expect("some dependency declares a rust-version");
    for p in &ours {
        let declared = p["rust_version"]
            .as_str()
            .unwrap_or_else(|| panic!("{} declares no rust-version", p["name"]));
        assert_eq!(
            version(declared),
            floor.0,
            "{} declares rust-version {declared}; the lock file's floor is {:?} ({}): set \
             [workspace.package] rust-version to it (every crate inherits it)",
            p["name"],
            floor.0,
            floor.1
        );
    }
}
