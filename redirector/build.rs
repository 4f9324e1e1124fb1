//! Embeds the eBPF object built by `cargo xtask build-ebpf`, and refuses a stale one: the
//! object must be newer than every source it is built from (redirector-ebpf and
//! redirector-common), so the agent never ships programs that disagree with its map layout.
//! Also the git revision for `--version`.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

include!("../build-support/revision.rs");

fn newest(dir: &Path, newest_seen: &mut (SystemTime, PathBuf)) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n == "target") {
                continue;
            }
            newest(&path, newest_seen);
        } else if let Ok(modified) = entry.metadata().and_then(|m| m.modified()) {
            if modified > newest_seen.0 {
                *newest_seen = (modified, path);
            }
        }
    }
}

fn main() {
    emit_revision();
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest.parent().unwrap().to_path_buf();
    let object = root.join("target/ebpf/bpfel-unknown-none/release/redirector-ebpf");
    let sources = [
        root.join("redirector-ebpf/src"),
        root.join("redirector-ebpf/Cargo.toml"),
        root.join("redirector-ebpf/Cargo.lock"),
        root.join("redirector-common/src"),
        root.join("redirector-common/Cargo.toml"),
    ];
    for source in &sources {
        println!("cargo:rerun-if-changed={}", source.display());
    }
    println!("cargo:rerun-if-changed={}", object.display());

    let built = match std::fs::metadata(&object).and_then(|m| m.modified()) {
        Ok(t) => t,
        Err(_) => panic!(
            "\n\nthe eBPF object {} is missing: run `cargo xtask build-ebpf` first \
             (it installs the nightly rust-src and bpf-linker it needs)\n\n",
            object.display()
        ),
    };
    let mut newest_seen = (SystemTime::UNIX_EPOCH, PathBuf::new());
    for source in &sources {
        if source.is_dir() {
            newest(source, &mut newest_seen);
        } else if let Ok(modified) = std::fs::metadata(source).and_then(|m| m.modified()) {
            if modified > newest_seen.0 {
                newest_seen = (modified, source.clone());
            }
        }
    }
    if newest_seen.0 > built {
        panic!(
            "\n\nthe eBPF object {} is older than {}: run `cargo xtask build-ebpf` to rebuild \
             it (a stale object is never embedded)\n\n",
            object.display(),
            newest_seen.1.display()
        );
    }
    println!("cargo:rustc-env=LATTICE_EBPF_OBJECT={}", object.display());
}
