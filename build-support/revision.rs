// Included by the binaries' build scripts: the git revision of the checkout, for
// `--version` and the start-up log line (`LATTICE_EGRESS_REVISION`: 12 hex digits, with
// `-dirty` when tracked files differ from it; `unknown` outside a git checkout).

fn git(root: &std::path::Path, args: &[&str]) -> Option<String> {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(root)
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn emit_revision() {
    let manifest = std::path::PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest.parent().unwrap().to_path_buf();
    let revision = match git(&root, &["rev-parse", "--short=12", "HEAD"]) {
        Some(rev) => {
            let dirty = git(&root, &["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|s| !s.is_empty());
            if dirty {
                format!("{rev}-dirty")
            } else {
                rev
            }
        }
        None => "unknown".to_string(),
    };
    // A new commit, a checkout or a change of the index runs this again.
    if let Some(dir) = git(&root, &["rev-parse", "--absolute-git-dir"]) {
        for f in ["HEAD", "index"] {
            println!("cargo:rerun-if-changed={dir}/{f}");
        }
    }
    if let Some(common) = git(&root, &["rev-parse", "--path-format=absolute", "--git-common-dir"]) {
        for f in ["refs/heads", "packed-refs"] {
            println!("cargo:rerun-if-changed={common}/{f}");
        }
    }
    println!("cargo:rustc-env=LATTICE_EGRESS_REVISION={revision}");
}
