//! Installing what the tasks need on a fresh machine: nightly's rust-src, bpf-linker built
//! against nightly's own libLLVM, and Debian packages. Tools live outside the checkout (in
//! `$LATTICE_EGRESS_CACHE`, default `~/.cache/lattice-egress`) so the next run on the same
//! machine finds them, while a new machine builds them unattended.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The bpf-linker release we build; its `llvm-NN` features must cover nightly's LLVM.
const BPF_LINKER_VERSION: &str = "0.13.0";
/// LLVM majors bpf-linker 0.13 has a feature for.
const BPF_LINKER_LLVM: &[u32] = &[21, 22, 23];

/// Prints a step so that long operations never look hung.
pub fn step(what: &str) {
    eprintln!("==> {what}");
}

/// Runs `cmd`, failing with the command line when it cannot start or exits non-zero.
pub fn run(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let status = cmd
        .status()
        .with_context(|| format!("could not start {shown}"))?;
    if !status.success() {
        bail!("{shown} failed with {status}");
    }
    Ok(())
}

/// Runs `cmd` and returns its standard output as text.
pub fn output(cmd: &mut Command) -> Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .output()
        .with_context(|| format!("could not start {shown}"))?;
    if !out.status.success() {
        bail!(
            "{shown} failed with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The workspace root (the parent of xtask/).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives inside the workspace")
        .to_path_buf()
}

/// Where per-machine tools are cached.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("LATTICE_EGRESS_CACHE") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".cache/lattice-egress")
}

/// The paths of a ready eBPF toolchain.
pub struct EbpfToolchain {
    /// Directory holding `bpf-linker`, to put first on PATH.
    pub linker_bin: PathBuf,
}

/// Makes sure nightly has rust-src and that a bpf-linker matching nightly's LLVM exists.
pub fn ebpf_toolchain() -> Result<EbpfToolchain> {
    let sysroot = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"])).context(
        "the nightly toolchain is missing: it builds the eBPF programs; \
             install it with `rustup toolchain install nightly`",
    )?;
    let sysroot = PathBuf::from(sysroot.trim());
    let nightly = output(Command::new("rustc").args(["+nightly", "--version"]))?;
    let nightly = nightly.trim().to_string();

    if !sysroot.join("lib/rustlib/src/rust/library/core").is_dir() {
        step("adding rust-src to the nightly toolchain (needed for -Z build-std=core)");
        run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))
        .context(
            "could not add rust-src; run `rustup component add rust-src --toolchain nightly`",
        )?;
    }

    let (llvm_major, libllvm) = nightly_llvm(&sysroot.join("lib"))?;
    let root = cache_dir().join("bpf-linker");
    let linker = root.join("bin/bpf-linker");
    let stamp = root.join("built-for");
    let want = format!("bpf-linker {BPF_LINKER_VERSION} llvm-{llvm_major} {nightly}\n");
    let have = std::fs::read_to_string(&stamp).unwrap_or_default();
    if linker.is_file() && have == want {
        return Ok(EbpfToolchain {
            linker_bin: root.join("bin"),
        });
    }

    step(&format!(
        "building bpf-linker {BPF_LINKER_VERSION} against nightly's libLLVM {llvm_major} \
         into {} (once per machine, about 2 minutes)",
        root.display()
    ));
    // bpf-linker links to the very libLLVM rustc uses, so what it emits matches what
    // nightly produces; llvm-sys finds it through LLVM_PREFIX/lib/libLLVM.so.
    let prefix = cache_dir().join("llvm");
    let lib = prefix.join("lib");
    std::fs::create_dir_all(&lib).with_context(|| format!("creating {}", lib.display()))?;
    let link = lib.join("libLLVM.so");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&libllvm, &link)
        .with_context(|| format!("linking {} to {}", link.display(), libllvm.display()))?;
    let name = libllvm.file_name().expect("a library file has a name");
    let named = lib.join(name);
    let _ = std::fs::remove_file(&named);
    std::os::unix::fs::symlink(&libllvm, &named)?;
    run(Command::new("cargo")
        .args([
            "+nightly",
            "install",
            "--locked",
            "--force",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
        ])
        .args([
            "--no-default-features",
            "--features",
            &format!("llvm-{llvm_major}"),
        ])
        .arg("--root")
        .arg(&root)
        .env("LLVM_PREFIX", &prefix))
    .with_context(|| {
        format!(
            "building bpf-linker failed; retry by hand with \
             `LLVM_PREFIX={} cargo +nightly install bpf-linker --version {BPF_LINKER_VERSION} \
             --no-default-features --features llvm-{llvm_major} --root {}`",
            prefix.display(),
            root.display()
        )
    })?;
    std::fs::write(&stamp, want)?;
    Ok(EbpfToolchain {
        linker_bin: root.join("bin"),
    })
}

/// Finds nightly's libLLVM and its major version from the file name
/// (`libLLVM.so.22.1-rust-1.97.0-nightly` or `libLLVM-22-rust-1.97.0-nightly.so`).
fn nightly_llvm(lib: &Path) -> Result<(u32, PathBuf)> {
    let entries =
        std::fs::read_dir(lib).with_context(|| format!("listing nightly's {}", lib.display()))?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let version = name
            .strip_prefix("libLLVM.so.")
            .or_else(|| name.strip_prefix("libLLVM-"));
        let Some(version) = version else { continue };
        let major: String = version.chars().take_while(|c| c.is_ascii_digit()).collect();
        let Ok(major) = major.parse::<u32>() else {
            continue;
        };
        if !BPF_LINKER_LLVM.contains(&major) {
            bail!(
                "nightly's libLLVM {major} ({name}) is not supported by bpf-linker \
                 {BPF_LINKER_VERSION} (supports LLVM {BPF_LINKER_LLVM:?}); install a nightly \
                 toolchain with one of those with `rustup toolchain install nightly-YYYY-MM-DD`"
            );
        }
        return Ok((major, entry.path()));
    }
    bail!(
        "no libLLVM in {}: bpf-linker must link nightly's own LLVM; reinstall nightly with \
         `rustup toolchain install nightly --force`",
        lib.display()
    )
}

/// Installs Debian packages that are missing (apt-get update once first).
pub fn apt_install(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| {
            Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", p])
                .output()
                .map(|o| !String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
                .unwrap_or(true)
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    step(&format!(
        "installing Debian packages: {}",
        missing.join(" ")
    ));
    run(Command::new("apt-get").args(["update", "-q"]))
        .context("apt-get update failed; are you root with the Debian mirror reachable?")?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
    .with_context(|| format!("run `apt-get install {}` as root", missing.join(" ")))
}

/// Fails with a clear message unless running as root.
pub fn require_root(what: &str) -> Result<()> {
    if !nix_is_root() {
        bail!("{what} needs root (cgroups, bpffs, network namespaces): run it with sudo");
    }
    Ok(())
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}
