//! `cargo xtask image`: OCI images of lattice-proxy, lattice-redirector and lattice-injector,
//! written without a container daemon or image builder.
//!
//! The binaries are built static (release, fat LTO) and each image's one layer holds the
//! binary at `/<name>` and nothing else — no shell, no package manager — except, for the
//! proxy, Debian's CA bundle, an nsswitch.conf and passwd/group entries for its user
//! 1337:1337. The result is an OCI image layout directory (`target/images/<name>/`) and the
//! same layout as one archive (`target/images/<name>.oci.tar`), which
//! `skopeo copy oci-archive:…` pushes.
//!
//! The C library is static glibc by default (`--libc musl` for musl): under
//! `cargo xtask bench proxy`, the musl build of lattice-proxy spent ~25 % more CPU per request
//! than the glibc one, ~15 % more with mimalloc in place of musl's malloc, because musl's
//! memcpy (`rep movsq` from 8 bytes up) then took 12 % of all samples against 3 % for
//! glibc's. Static glibc has glibc's malloc and memcpy: it measured the CPU per request of the
//! dynamic build, with less idle RSS (8.6 against 9.4–9.7 MiB).
//!
//! The layout is written here rather than by buildah, which records the build time and the
//! host in what it writes: the same commit gives the same digest. Tar entries are sorted,
//! owned by 0:0 with fixed modes and the one time of the image (`SOURCE_DATE_EPOCH`, or the
//! commit's time); the gzip header has no time or name; JSON comes from structs and sorted
//! maps. The binaries are built with the workspace and cargo home paths remapped, so the
//! checkout's location does not end up in them either. What the images still depend on: the
//! toolchain and Cargo.lock (the same for everyone), and the build host's Debian packages
//! libc6-dev (static glibc) and ca-certificates (the proxy's CA bundle).
//!
//! `--check` writes every image twice and compares, then has independent readers judge the
//! result: `skopeo inspect` (manifest, labels, the image config) on the directory and the
//! archive, and `umoci unpack`, whose root filesystem must hold exactly the expected files,
//! whose runtime config must run the entrypoint as the configured user, and whose binary,
//! run as that user inside the unpacked root (chroot, so no library of the host can help),
//! must print its version. `cargo xtask test` runs it.

use crate::ebpf;
use crate::setup::{self, step};
use anyhow::{ensure, Context, Result};
use clap::Args;
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// Debian's CA bundle (package ca-certificates), copied into the proxy's image.
const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// The proxy's user and group: the agent's `proxy-gid` (deploy/base/redirector.toml) and the
/// sidecar's runAsUser/runAsGroup (deploy/components/sidecar).
const PROXY_ID: u32 = 1337;
/// The injector's user and group (deploy/components/injector/deployment.yaml).
const INJECTOR_ID: u32 = 65532;
/// The binaries that get an image: one cargo package and binary each, of the same name.
const BINARIES: [&str; 3] = ["lattice-proxy", "lattice-redirector", "lattice-injector"];

/// The C library the static binaries link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Libc {
    /// glibc, linked statically (`x86_64-unknown-linux-gnu`, `+crt-static`): the malloc and
    /// memcpy of the builds the benchmarks measure.
    Glibc,
    /// musl (`x86_64-unknown-linux-musl`): measured here, lattice-proxy spends ~25 % more CPU
    /// per request with it (its memcpy and malloc), ~15 % more with mimalloc.
    Musl,
}

impl Libc {
    /// The Rust target triple.
    fn target(self) -> &'static str {
        match self {
            Libc::Glibc => "x86_64-unknown-linux-gnu",
            Libc::Musl => "x86_64-unknown-linux-musl",
        }
    }
}

/// Options of `cargo xtask image`.
#[derive(Debug, Args)]
pub struct Image {
    /// Write every image twice and check the digests agree, then inspect the result with
    /// skopeo and umoci and run each unpacked binary's `--version` (installs both tools;
    /// run as root to unpack with ownership and run the binaries in a chroot).
    #[arg(long)]
    pub check: bool,
    /// Value of the `org.opencontainers.image.source` label [default: the `repository` of
    /// the package's Cargo.toml; without one the label is left out].
    #[arg(long)]
    pub source: Option<String>,
    /// The C library of the static binaries.
    #[arg(long, value_enum, default_value_t = Libc::Glibc)]
    pub libc: Libc,
}

impl Default for Image {
    /// The same as `cargo xtask image` with no option.
    fn default() -> Self {
        Image {
            check: false,
            source: None,
            libc: Libc::Glibc,
        }
    }
}

/// What an image holds and how it runs; the writer reads nothing else, so the same `Spec`
/// always gives the same bytes.
#[derive(Debug, Clone)]
pub struct Spec {
    /// The files of the single layer; their parent directories are added.
    pub files: Vec<File>,
    pub entrypoint: Vec<String>,
    /// `uid:gid`.
    pub user: String,
    pub env: Vec<String>,
    /// Labels of the image config, also the manifest's annotations.
    pub labels: BTreeMap<String, String>,
    /// The image's time (seconds since the epoch): `created`, and every file's mtime.
    pub created: u64,
    /// The tag (`org.opencontainers.image.ref.name`) in index.json.
    pub tag: String,
}

/// One regular file of the layer.
#[derive(Debug, Clone)]
pub struct File {
    /// Relative to the root, e.g. `etc/passwd`.
    pub path: String,
    pub mode: u32,
    pub data: Vec<u8>,
}

/// An image layout in memory: path inside the layout → content, and the manifest digest.
pub struct Layout {
    pub files: BTreeMap<String, Vec<u8>>,
    pub manifest_digest: String,
    pub layer_diff_id: String,
}

const MEDIA_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const MEDIA_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    media_type: &'static str,
    digest: String,
    size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    platform: Option<Platform>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    annotations: BTreeMap<String, String>,
}

#[derive(Serialize)]
struct Platform {
    architecture: &'static str,
    os: &'static str,
}

#[derive(Serialize)]
struct ImageConfig {
    created: String,
    architecture: &'static str,
    os: &'static str,
    config: RunConfig,
    rootfs: RootFs,
    history: Vec<History>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct RunConfig {
    user: String,
    entrypoint: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    env: Vec<String>,
    working_dir: &'static str,
    labels: BTreeMap<String, String>,
}

#[derive(Serialize)]
struct RootFs {
    #[serde(rename = "type")]
    kind: &'static str,
    diff_ids: Vec<String>,
}

#[derive(Serialize)]
struct History {
    created: String,
    created_by: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Manifest {
    schema_version: u32,
    media_type: &'static str,
    config: Descriptor,
    layers: Vec<Descriptor>,
    annotations: BTreeMap<String, String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Index {
    schema_version: u32,
    media_type: &'static str,
    manifests: Vec<Descriptor>,
}

/// `sha256:<hex>` of `data`.
fn digest(data: &[u8]) -> String {
    let hash = Sha256::digest(data);
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256:");
    for byte in hash.iter() {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

/// A tar of `entries` (path → `Some((mode, content))` for a file, `None` for a directory),
/// in path order, every entry owned by 0:0 and dated `mtime`.
fn tar(entries: &BTreeMap<String, Option<(u32, &[u8])>>, mtime: u64) -> Result<Vec<u8>> {
    let mut out = tar::Builder::new(Vec::new());
    for (path, entry) in entries {
        let mut header = tar::Header::new_ustar();
        let (kind, mode, data): (_, _, &[u8]) = match entry {
            Some((mode, data)) => (tar::EntryType::Regular, *mode, data),
            None => (tar::EntryType::Directory, 0o755, &[]),
        };
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(mtime);
        header.set_size(data.len() as u64);
        out.append_data(&mut header, path, data)
            .with_context(|| format!("adding {path} to a tar"))?;
    }
    Ok(out.into_inner()?)
}

/// The layer of `files`: each file and every parent directory, sorted, so the parents come
/// before what they hold.
fn layer_tar(files: &[File], mtime: u64) -> Result<Vec<u8>> {
    let mut entries: BTreeMap<String, Option<(u32, &[u8])>> = BTreeMap::new();
    for file in files {
        ensure!(
            !file.path.starts_with('/') && !file.path.split('/').any(|c| c.is_empty() || c == ".."),
            "layer path {:?} must be relative and plain",
            file.path
        );
        let mut parent = Path::new(&file.path).parent();
        while let Some(dir) = parent.filter(|d| !d.as_os_str().is_empty()) {
            entries.insert(dir.to_string_lossy().into_owned(), None);
            parent = dir.parent();
        }
        let old = entries.insert(file.path.clone(), Some((file.mode, &file.data)));
        ensure!(old.is_none(), "{} is in the layer twice", file.path);
    }
    tar(&entries, mtime)
}

/// gzip with a header that holds no time, no name and "unknown" OS.
fn gzip(data: &[u8]) -> Result<Vec<u8>> {
    let mut gz = flate2::GzBuilder::new()
        .mtime(0)
        .operating_system(255)
        .write(Vec::new(), flate2::Compression::default());
    gz.write_all(data)?;
    Ok(gz.finish()?)
}

/// RFC 3339 UTC time of `secs` after the epoch (days to civil date: H. Hinnant's algorithm).
fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3_600,
        rem / 60 % 60,
        rem % 60
    )
}

/// The OCI image layout of `spec`: `oci-layout`, `index.json` and `blobs/sha256/*`.
pub fn layout(spec: &Spec) -> Result<Layout> {
    let mut files = BTreeMap::new();
    let mut blob = |data: Vec<u8>, media_type: &'static str| {
        let descriptor = Descriptor {
            media_type,
            digest: digest(&data),
            size: data.len() as u64,
            platform: None,
            annotations: BTreeMap::new(),
        };
        let hex = &descriptor.digest["sha256:".len()..];
        files.insert(format!("blobs/sha256/{hex}"), data);
        descriptor
    };

    let layer = layer_tar(&spec.files, spec.created)?;
    let layer_diff_id = digest(&layer);
    let layer = blob(gzip(&layer)?, MEDIA_LAYER);

    let created = rfc3339(spec.created);
    let config = ImageConfig {
        created: created.clone(),
        architecture: "amd64",
        os: "linux",
        config: RunConfig {
            user: spec.user.clone(),
            entrypoint: spec.entrypoint.clone(),
            env: spec.env.clone(),
            working_dir: "/",
            labels: spec.labels.clone(),
        },
        rootfs: RootFs {
            kind: "layers",
            diff_ids: vec![layer_diff_id.clone()],
        },
        history: vec![History {
            created,
            created_by: "cargo xtask image",
        }],
    };
    let config = blob(serde_json::to_vec(&config)?, MEDIA_CONFIG);

    let manifest = Manifest {
        schema_version: 2,
        media_type: MEDIA_MANIFEST,
        config,
        layers: vec![layer],
        annotations: spec.labels.clone(),
    };
    let mut manifest = blob(serde_json::to_vec(&manifest)?, MEDIA_MANIFEST);
    manifest.platform = Some(Platform {
        architecture: "amd64",
        os: "linux",
    });
    manifest
        .annotations
        .insert("org.opencontainers.image.ref.name".into(), spec.tag.clone());
    let manifest_digest = manifest.digest.clone();

    let index = Index {
        schema_version: 2,
        media_type: MEDIA_INDEX,
        manifests: vec![manifest],
    };
    files.insert("index.json".into(), serde_json::to_vec(&index)?);
    files.insert(
        "oci-layout".into(),
        br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
    );
    Ok(Layout {
        files,
        manifest_digest,
        layer_diff_id,
    })
}

/// The layout as one tar (what `oci-archive:` readers take), with the same fixed metadata.
pub fn archive(layout: &Layout, mtime: u64) -> Result<Vec<u8>> {
    let mut entries: BTreeMap<String, Option<(u32, &[u8])>> = BTreeMap::new();
    entries.insert("blobs".into(), None);
    entries.insert("blobs/sha256".into(), None);
    for (path, data) in &layout.files {
        entries.insert(path.clone(), Some((0o644, data)));
    }
    tar(&entries, mtime)
}

/// Writes the layout to the directory `dir` (replacing it) and its archive to `tar_path`.
pub fn write(layout: &Layout, mtime: u64, dir: &Path, tar_path: &Path) -> Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    for (path, data) in &layout.files {
        let path = dir.join(path);
        std::fs::create_dir_all(path.parent().expect("layout paths have a parent"))?;
        std::fs::write(&path, data).with_context(|| format!("writing {}", path.display()))?;
    }
    std::fs::write(tar_path, archive(layout, mtime)?)
        .with_context(|| format!("writing {}", tar_path.display()))
}

/// Whether an ELF executable asks for a program interpreter (a dynamic loader, PT_INTERP):
/// a static binary has none.
pub fn has_interpreter(elf: &[u8]) -> Result<bool> {
    ensure!(
        elf.len() >= 64 && elf.starts_with(b"\x7fELF"),
        "not an ELF file"
    );
    ensure!(
        elf[4] == 2 && elf[5] == 1,
        "not a 64-bit little-endian ELF file"
    );
    let u16_at = |at: usize| u16::from_le_bytes([elf[at], elf[at + 1]]) as usize;
    let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into()?) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    for i in 0..phnum {
        let at = phoff + i * phentsize;
        let p_type = elf
            .get(at..at + 4)
            .context("program header table out of the file")?;
        const PT_INTERP: u32 = 3;
        if u32::from_le_bytes(p_type.try_into()?) == PT_INTERP {
            return Ok(true);
        }
    }
    Ok(false)
}

/// One image to make: which binary, run as whom, with what else.
struct Recipe {
    name: &'static str,
    /// `uid:gid`, the same as the manifests' securityContext; the agent runs as root (it is
    /// privileged: bpf(2), bpffs, cgroups).
    user: String,
    /// The proxy: Debian's CA bundle (system roots for TLS to Lattice) and passwd/group
    /// entries for its user.
    proxy_extras: bool,
}

fn recipes() -> [Recipe; 3] {
    let [proxy, redirector, injector] = BINARIES;
    [
        Recipe {
            name: proxy,
            user: format!("{PROXY_ID}:{PROXY_ID}"),
            proxy_extras: true,
        },
        Recipe {
            name: redirector,
            user: "0:0".into(),
            proxy_extras: false,
        },
        Recipe {
            name: injector,
            user: format!("{INJECTOR_ID}:{INJECTOR_ID}"),
            proxy_extras: false,
        },
    ]
}

/// What cargo says about a package (cargo metadata).
struct Package {
    version: String,
    description: Option<String>,
    license: Option<String>,
    repository: Option<String>,
}

fn packages(root: &Path) -> Result<BTreeMap<String, Package>> {
    let out = setup::output(Command::new("cargo").current_dir(root).args([
        "metadata",
        "--no-deps",
        "--format-version",
        "1",
    ]))?;
    let meta: Value = serde_json::from_str(&out).context("parsing cargo metadata")?;
    let text = |p: &Value, key: &str| p[key].as_str().map(str::to_string);
    Ok(meta["packages"]
        .as_array()
        .context("cargo metadata lists no packages")?
        .iter()
        .filter_map(|p| {
            Some((
                text(p, "name")?,
                Package {
                    version: text(p, "version")?,
                    description: text(p, "description"),
                    license: text(p, "license"),
                    repository: text(p, "repository"),
                },
            ))
        })
        .collect())
}

/// The commit (with `-dirty` when tracked files differ from it) and the image time:
/// `SOURCE_DATE_EPOCH` when set, else the commit's time.
fn revision_and_time(root: &Path) -> Result<(String, u64)> {
    let git = |args: &[&str]| {
        setup::output(Command::new("git").current_dir(root).args(args))
            .map(|s| s.trim().to_string())
    };
    let commit = git(&["rev-parse", "HEAD"])
        .context("the image's revision label and time come from git; is this a checkout?")?;
    let clean = Command::new("git")
        .current_dir(root)
        .args(["diff", "--quiet", "HEAD", "--"])
        .status()?
        .success();
    let revision = if clean {
        commit
    } else {
        format!("{commit}-dirty")
    };
    let time = match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) => v
            .trim()
            .parse()
            .with_context(|| format!("SOURCE_DATE_EPOCH={v:?} is not a number of seconds"))?,
        Err(_) => git(&["log", "-1", "--format=%ct"])?
            .parse()
            .context("git log gave no commit time")?,
    };
    Ok((revision, time))
}

/// What a static build for `libc` needs: Rust's musl target and musl-gcc (ring compiles C and
/// assembly for the target), or glibc's static libraries.
fn toolchain(root: &Path, libc: Libc) -> Result<()> {
    match libc {
        Libc::Glibc => setup::apt_install(&["libc6-dev"]),
        Libc::Musl => {
            let musl = libc.target();
            let installed = setup::output(Command::new("rustup").current_dir(root).args([
                "target",
                "list",
                "--installed",
            ]))
            .context("rustup is needed to add the musl target")?;
            if !installed.lines().any(|l| l.trim() == musl) {
                step(&format!(
                    "rustup target add {musl} (Rust's standard library for static musl binaries)"
                ));
                setup::run(
                    Command::new("rustup")
                        .current_dir(root)
                        .args(["target", "add", musl]),
                )?;
            }
            setup::apt_install(&["musl-tools"])
        }
    }
}

/// The cargo build of the static binaries, in one invocation: the features of what they
/// share are unified the same way every time, so each binary is the same whichever image is
/// wanted.
fn build_command(root: &Path, libc: Libc) -> Command {
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cargo")
        });
    // With --target these flags reach only the binaries' own build (target/<triple>/), never
    // build scripts or proc macros, so the host artifacts stay shared with the other release
    // builds. The image
    // carries no debug info (symbols stay, for backtraces): `debug = 1` of the release
    // profile serves profiling on the build machine.
    let mut flags = vec![
        format!("--remap-path-prefix={}=/lattice-egress", root.display()),
        format!("--remap-path-prefix={}=/cargo", cargo_home.display()),
        "-Cstrip=debuginfo".to_string(),
    ];
    let mut cmd = Command::new("cargo");
    match libc {
        // Static glibc resolves names with its built-in `files` and `dns` sources only (the
        // link warns about getaddrinfo for that reason): all a container has.
        Libc::Glibc => flags.push("-Ctarget-feature=+crt-static".into()),
        // musl-gcc for ring's C, set here and never in the user's cargo configuration.
        Libc::Musl => {
            cmd.env("CC_x86_64_unknown_linux_musl", "musl-gcc");
        }
    }
    cmd.current_dir(root)
        .args(["build", "--release", "--locked", "--target", libc.target()]);
    for name in BINARIES {
        cmd.args(["-p", name, "--bin", name]);
    }
    cmd.env("CARGO_ENCODED_RUSTFLAGS", flags.join("\x1f"))
        .env_remove("RUSTFLAGS")
        .env_remove("RUSTC_WRAPPER");
    // `cargo xtask` runs under `cargo run`, which sets the package variables of xtask; ring's
    // build script reruns when CARGO_MANIFEST_DIR changes, so with them the build from here
    // and the same build from a shell would recompile each other's ring and everything on it.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("CARGO_PKG_")
            || [
                "CARGO_MANIFEST_DIR",
                "CARGO_MANIFEST_PATH",
                "CARGO_CRATE_NAME",
                "CARGO_BIN_NAME",
                "CARGO_PRIMARY_PACKAGE",
            ]
            .contains(&key.as_ref())
        {
            cmd.env_remove(key.as_ref());
        }
    }
    cmd
}

/// The image specification of `recipe` around the built `binary`.
fn spec(
    recipe: &Recipe,
    binary: Vec<u8>,
    package: &Package,
    revision: &str,
    created: u64,
    source: Option<&str>,
) -> Result<Spec> {
    let mut files = vec![File {
        path: recipe.name.to_string(),
        mode: 0o755,
        data: binary,
    }];
    let mut env = Vec::new();
    if recipe.proxy_extras {
        let ca = std::fs::read(CA_BUNDLE).with_context(|| {
            format!("reading {CA_BUNDLE}: install Debian's ca-certificates package")
        })?;
        files.push(File {
            path: CA_BUNDLE.trim_start_matches('/').to_string(),
            mode: 0o644,
            data: ca,
        });
        let name = recipe.name;
        files.push(File {
            path: "etc/passwd".into(),
            mode: 0o644,
            data: format!(
                "root:x:0:0:root:/root:/sbin/nologin\n\
                 {name}:x:{PROXY_ID}:{PROXY_ID}:{name}:/nonexistent:/sbin/nologin\n"
            )
            .into_bytes(),
        });
        files.push(File {
            path: "etc/group".into(),
            mode: 0o644,
            data: format!("root:x:0:\n{name}:x:{PROXY_ID}:\n").into_bytes(),
        });
        // Without this file glibc uses `hosts: dns [!UNAVAIL=return] files`: a name that DNS
        // does not know would never be looked up in /etc/hosts (Kubernetes' hostAliases).
        // musl reads /etc/hosts first anyway.
        files.push(File {
            path: "etc/nsswitch.conf".into(),
            mode: 0o644,
            data: b"hosts: files dns\n".to_vec(),
        });
        // rustls-native-certs reads this file only, instead of probing a list of places.
        env.push(format!("SSL_CERT_FILE={CA_BUNDLE}"));
    }
    let mut labels = BTreeMap::new();
    let mut label = |key: &str, value: &str| {
        labels.insert(format!("org.opencontainers.image.{key}"), value.to_string())
    };
    label("title", recipe.name);
    label("version", &package.version);
    label("revision", revision);
    label("created", &rfc3339(created));
    if let Some(source) = source.or(package.repository.as_deref()) {
        label("source", source);
    }
    if let Some(description) = &package.description {
        label("description", description);
    }
    if let Some(license) = &package.license {
        label("licenses", license);
    }
    Ok(Spec {
        files,
        entrypoint: vec![format!("/{}", recipe.name)],
        user: recipe.user.clone(),
        env,
        labels,
        created,
        tag: package.version.clone(),
    })
}

/// One image made: its spec, where it was written and its manifest digest.
struct Made {
    spec: Spec,
    /// The static binary the image holds.
    binary: PathBuf,
    dir: PathBuf,
    tar: PathBuf,
    digest: String,
    layer_diff_id: String,
}

/// Builds the binaries and writes the images (twice, and checks them, with `--check`).
pub fn run(opts: &Image) -> Result<()> {
    let root = setup::workspace_root();
    toolchain(&root, opts.libc)?;
    // The agent embeds the eBPF object (its build.rs refuses a stale one).
    ebpf::run(&ebpf::BuildEbpf {})?;
    step(&format!(
        "cargo build --release --target {} of {} (static; fat LTO: several minutes on 2 \
         cores when cold)",
        opts.libc.target(),
        BINARIES.join(", ")
    ));
    let started = Instant::now();
    setup::run(&mut build_command(&root, opts.libc))
        .context("building the static binaries failed (see the compiler output above)")?;
    step(&format!(
        "static binaries ready in {:.0} s",
        started.elapsed().as_secs_f64()
    ));

    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let out = target.join("images");
    std::fs::create_dir_all(&out)?;
    let packages = packages(&root)?;
    let (revision, created) = revision_and_time(&root)?;
    if revision.ends_with("-dirty") {
        step(&format!(
            "uncommitted changes: the revision label is {revision}"
        ));
    }

    let mut made = Vec::new();
    for recipe in recipes() {
        let bin = target
            .join(opts.libc.target())
            .join("release")
            .join(recipe.name);
        let binary = std::fs::read(&bin).with_context(|| format!("reading {}", bin.display()))?;
        ensure!(
            !has_interpreter(&binary).with_context(|| bin.display().to_string())?,
            "{} asks for a dynamic loader (PT_INTERP): it is not static",
            bin.display()
        );
        let package = packages
            .get(recipe.name)
            .with_context(|| format!("cargo metadata has no package {}", recipe.name))?;
        let spec = spec(
            &recipe,
            binary,
            package,
            &revision,
            created,
            opts.source.as_deref(),
        )?;
        if !spec.labels.contains_key("org.opencontainers.image.source") {
            step(&format!(
                "no org.opencontainers.image.source label for {}: give --source URL or set \
                 `repository` in its Cargo.toml",
                recipe.name
            ));
        }
        let layout = layout(&spec)?;
        let dir = out.join(recipe.name);
        let tar = out.join(format!("{}.oci.tar", recipe.name));
        write(&layout, created, &dir, &tar)?;
        let size = std::fs::metadata(&tar)?.len();
        println!(
            "{}: {} (tag {}), {} and {} ({:.1} MiB)",
            recipe.name,
            layout.manifest_digest,
            spec.tag,
            dir.display(),
            tar.display(),
            size as f64 / 1_048_576.0
        );
        made.push(Made {
            spec,
            binary: bin,
            dir,
            tar,
            digest: layout.manifest_digest,
            layer_diff_id: layout.layer_diff_id,
        });
    }
    if opts.check {
        check(&out, &made)?;
    }
    Ok(())
}

/// `--check`: a second writing gives the same bytes; skopeo and umoci read what we meant.
fn check(out: &Path, made: &[Made]) -> Result<()> {
    setup::apt_install(&["skopeo", "umoci"])?;
    let scratch = out.join(".check");
    let _cleanup = RemoveOnDrop(scratch.clone());
    let _ = std::fs::remove_dir_all(&scratch);
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    for image in made {
        let name = image.spec.entrypoint[0].trim_start_matches('/');
        step(&format!("checking the {name} image"));

        // The same inputs again, read anew: the same digest and the same archive bytes.
        let mut again = image.spec.clone();
        again.files[0].data = std::fs::read(&image.binary)?;
        let layout = layout(&again)?;
        let dir = scratch.join(name);
        let tar = scratch.join(format!("{name}.oci.tar"));
        std::fs::create_dir_all(&scratch)?;
        write(&layout, again.created, &dir, &tar)?;
        ensure!(
            layout.manifest_digest == image.digest,
            "{name}: writing the image again gave {} instead of {}",
            layout.manifest_digest,
            image.digest
        );
        ensure!(
            std::fs::read(&tar)? == std::fs::read(&image.tar)?,
            "{name}: the archive differs from one writing to the next"
        );
        println!("{name}: written twice, same digest {}", image.digest);

        // skopeo: the manifest we wrote, with its labels, from the directory and the archive.
        let oci = format!("oci:{}:{}", image.dir.display(), image.spec.tag);
        let inspect: Value = serde_json::from_str(&setup::output(
            Command::new("skopeo").args(["inspect", &oci]),
        )?)?;
        ensure!(
            inspect["Digest"] == image.digest.as_str(),
            "skopeo inspect {oci}: digest {} instead of {}",
            inspect["Digest"],
            image.digest
        );
        ensure!(
            inspect["Architecture"] == "amd64" && inspect["Os"] == "linux",
            "skopeo inspect {oci}: platform {}/{}",
            inspect["Os"],
            inspect["Architecture"]
        );
        for (key, value) in &image.spec.labels {
            ensure!(
                inspect["Labels"][key] == value.as_str(),
                "skopeo inspect {oci}: label {key} is {} instead of {value:?}",
                inspect["Labels"][key]
            );
        }
        let archive = format!("oci-archive:{}:{}", image.tar.display(), image.spec.tag);
        let from_archive: Value = serde_json::from_str(&setup::output(
            Command::new("skopeo").args(["inspect", &archive]),
        )?)?;
        ensure!(
            from_archive["Digest"] == image.digest.as_str(),
            "skopeo inspect {archive}: digest {} instead of {}",
            from_archive["Digest"],
            image.digest
        );
        let config: Value = serde_json::from_str(&setup::output(
            Command::new("skopeo").args(["inspect", "--config", &oci]),
        )?)?;
        let run = &config["config"];
        ensure!(
            run["Entrypoint"] == serde_json::json!(image.spec.entrypoint)
                && run["User"] == image.spec.user.as_str()
                && config["rootfs"]["diff_ids"] == serde_json::json!([image.layer_diff_id]),
            "skopeo inspect --config {oci}: entrypoint {}, user {}, diff_ids {} \
             (expected {:?}, {}, [{}])",
            run["Entrypoint"],
            run["User"],
            config["rootfs"]["diff_ids"],
            image.spec.entrypoint,
            image.spec.user,
            image.layer_diff_id
        );
        println!(
            "{name}: skopeo reads digest, labels, entrypoint {:?}, user {}",
            image.spec.entrypoint, image.spec.user
        );

        // umoci: unpack, then the root filesystem and the runtime config it derived.
        let bundle = scratch.join(format!("{name}.bundle"));
        let mut unpack = Command::new("umoci");
        unpack.arg("unpack");
        if !root {
            unpack.arg("--rootless");
        }
        setup::output(
            unpack
                .arg("--image")
                .arg(format!("{}:{}", image.dir.display(), image.spec.tag))
                .arg(&bundle),
        )?;
        let rootfs = bundle.join("rootfs");
        let found = tree(&rootfs)?;
        let expected = expected_tree(&image.spec);
        ensure!(
            found == expected,
            "{name}: the unpacked root holds {found:?}, expected {expected:?}"
        );
        ensure!(
            !rootfs.join("bin/sh").exists(),
            "{name}: the image has a shell"
        );
        for file in &image.spec.files {
            let path = rootfs.join(&file.path);
            ensure!(
                std::fs::read(&path)? == file.data,
                "{name}: the unpacked {} differs from what was packed",
                file.path
            );
            if root {
                use std::os::unix::fs::MetadataExt;
                let meta = std::fs::metadata(&path)?;
                ensure!(
                    meta.uid() == 0 && meta.gid() == 0,
                    "{name}: {} is owned by {}:{}, not 0:0",
                    file.path,
                    meta.uid(),
                    meta.gid()
                );
            }
        }
        let runtime: Value = serde_json::from_slice(&std::fs::read(bundle.join("config.json"))?)?;
        let process = &runtime["process"];
        let user = format!(
            "{}:{}",
            process["user"]["uid"].as_u64().unwrap_or(u64::MAX),
            process["user"]["gid"].as_u64().unwrap_or(u64::MAX)
        );
        ensure!(
            process["args"] == serde_json::json!(image.spec.entrypoint)
                && (!root || user == image.spec.user),
            "{name}: umoci's runtime config runs {} as {user}, expected {:?} as {}",
            process["args"],
            image.spec.entrypoint,
            image.spec.user
        );

        // The binary, alone in its root: only a static binary starts there.
        let version = format!("{name} {}", image.spec.tag);
        let output = if root {
            setup::output(
                Command::new("/usr/sbin/chroot")
                    .arg(format!("--userspec={}", image.spec.user))
                    .arg(&rootfs)
                    .args(&image.spec.entrypoint)
                    .arg("--version")
                    .env_clear(),
            )?
        } else {
            step("not root: running the unpacked binary outside a chroot");
            setup::output(Command::new(rootfs.join(name)).arg("--version").env_clear())?
        };
        // `NAME TAG (REVISION)`: the git revision the binary was built from.
        let printed = output.trim();
        let revision = printed
            .strip_prefix(&format!("{version} ("))
            .and_then(|r| r.strip_suffix(')'))
            .filter(|r| !r.is_empty() && !r.contains(char::is_whitespace));
        ensure!(
            revision.is_some(),
            "{name}: `--version` in the unpacked image printed {printed:?}, expected \
             \"{version} (<git revision>)\""
        );
        println!(
            "{name}: umoci unpacks {} entries, no shell; {} as {} prints {printed:?}",
            found.len(),
            image.spec.entrypoint[0],
            image.spec.user
        );
    }
    Ok(())
}

/// Every path under `root` (relative, `/` appended to directories) with its mode bits.
fn tree(root: &Path) -> Result<BTreeMap<String, u32>> {
    use std::os::unix::fs::PermissionsExt;
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, u32>) -> Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let meta = std::fs::symlink_metadata(entry.path())?;
            let rel = entry
                .path()
                .strip_prefix(root)?
                .to_string_lossy()
                .into_owned();
            let mode = meta.permissions().mode() & 0o7777;
            if meta.is_dir() {
                out.insert(format!("{rel}/"), mode);
                walk(root, &entry.path(), out)?;
            } else {
                out.insert(rel, mode);
            }
        }
        Ok(())
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out)?;
    Ok(out)
}

/// What [`tree`] must find in the unpacked root of `spec`.
fn expected_tree(spec: &Spec) -> BTreeMap<String, u32> {
    let mut out = BTreeMap::new();
    for file in &spec.files {
        out.insert(file.path.clone(), file.mode);
        let mut parent = Path::new(&file.path).parent();
        while let Some(dir) = parent.filter(|d| !d.as_os_str().is_empty()) {
            out.insert(format!("{}/", dir.display()), 0o755);
            parent = dir.parent();
        }
    }
    out
}

/// Removes a scratch directory on drop, also when a check fails.
struct RemoveOnDrop(PathBuf);
impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn sample(binary: &[u8]) -> Spec {
        Spec {
            files: vec![
                File {
                    path: "lattice-proxy".into(),
                    mode: 0o755,
                    data: binary.to_vec(),
                },
                File {
                    path: "etc/ssl/certs/ca-certificates.crt".into(),
                    mode: 0o644,
                    data: b"-----BEGIN CERTIFICATE-----\n".to_vec(),
                },
                File {
                    path: "etc/passwd".into(),
                    mode: 0o644,
                    data: b"root:x:0:0::/:/sbin/nologin\n".to_vec(),
                },
            ],
            entrypoint: vec!["/lattice-proxy".into()],
            user: "1337:1337".into(),
            env: vec![],
            labels: BTreeMap::from([(
                "org.opencontainers.image.version".to_string(),
                "0.1.0".to_string(),
            )]),
            created: 1_796_008_801,
            tag: "0.1.0".into(),
        }
    }

    #[test]
    fn same_spec_same_bytes_other_content_other_digest() {
        let a = layout(&sample(b"binary")).unwrap();
        let b = layout(&sample(b"binary")).unwrap();
        assert_eq!(a.manifest_digest, b.manifest_digest);
        assert_eq!(a.files, b.files);
        assert_eq!(
            archive(&a, 1_796_008_801).unwrap(),
            archive(&b, 1_796_008_801).unwrap()
        );
        let c = layout(&sample(b"other binary")).unwrap();
        assert_ne!(a.manifest_digest, c.manifest_digest);
        let mut later = sample(b"binary");
        later.created += 1;
        assert_ne!(a.manifest_digest, layout(&later).unwrap().manifest_digest);
    }

    #[test]
    fn layer_is_sorted_with_parents_fixed_owner_time_and_modes() {
        let spec = sample(b"binary");
        let mut entries = Vec::new();
        let layer = layer_tar(&spec.files, spec.created).unwrap();
        let mut tar = tar::Archive::new(&layer[..]);
        for entry in tar.entries().unwrap() {
            let mut entry = entry.unwrap();
            let h = entry.header().clone();
            assert_eq!((h.uid().unwrap(), h.gid().unwrap()), (0, 0));
            assert_eq!(h.mtime().unwrap(), spec.created);
            let mut data = Vec::new();
            entry.read_to_end(&mut data).unwrap();
            let path = entry.path().unwrap().to_string_lossy().into_owned();
            entries.push((path, h.mode().unwrap(), h.entry_type().is_dir(), data));
        }
        let names: Vec<_> = entries
            .iter()
            .map(|(p, m, d, _)| (p.as_str(), *m, *d))
            .collect();
        assert_eq!(
            names,
            [
                ("etc", 0o755, true),
                ("etc/passwd", 0o644, false),
                ("etc/ssl", 0o755, true),
                ("etc/ssl/certs", 0o755, true),
                ("etc/ssl/certs/ca-certificates.crt", 0o644, false),
                ("lattice-proxy", 0o755, false),
            ]
        );
        assert_eq!(entries[5].3, b"binary");
        assert!(layer_tar(
            &[File {
                path: "/abs".into(),
                mode: 0o644,
                data: vec![]
            }],
            0
        )
        .is_err());
    }

    #[test]
    fn blobs_are_named_by_their_digest_and_the_graph_holds_together() {
        let spec = sample(b"binary");
        let l = layout(&spec).unwrap();
        for (path, data) in &l.files {
            if let Some(hex) = path.strip_prefix("blobs/sha256/") {
                assert_eq!(digest(data), format!("sha256:{hex}"));
            }
        }
        let blob = |d: &Value| {
            let hex = d["digest"]
                .as_str()
                .unwrap()
                .strip_prefix("sha256:")
                .unwrap();
            let data = l.files[&format!("blobs/sha256/{hex}")].clone();
            assert_eq!(d["size"].as_u64().unwrap(), data.len() as u64);
            data
        };
        let index: Value = serde_json::from_slice(&l.files["index.json"]).unwrap();
        let m = &index["manifests"][0];
        assert_eq!(m["digest"], l.manifest_digest.as_str());
        assert_eq!(
            m["annotations"]["org.opencontainers.image.ref.name"],
            "0.1.0"
        );
        let manifest: Value = serde_json::from_slice(&blob(m)).unwrap();
        assert_eq!(manifest["mediaType"], MEDIA_MANIFEST);
        let config: Value = serde_json::from_slice(&blob(&manifest["config"])).unwrap();
        assert_eq!(config["config"]["User"], "1337:1337");
        assert_eq!(config["config"]["Entrypoint"][0], "/lattice-proxy");
        assert_eq!(config["created"], "2026-11-30T03:20:01Z");
        // diff_id: the digest of the uncompressed layer.
        let mut layer = Vec::new();
        flate2::read::GzDecoder::new(&blob(&manifest["layers"][0])[..])
            .read_to_end(&mut layer)
            .unwrap();
        assert_eq!(config["rootfs"]["diff_ids"][0], digest(&layer).as_str());
        assert_eq!(l.layer_diff_id, digest(&layer));
        // The gzip header: no time, OS unknown.
        let gz = blob(&manifest["layers"][0]);
        assert_eq!(&gz[4..8], &[0, 0, 0, 0]);
        assert_eq!(gz[9], 255);
    }

    #[test]
    fn written_twice_to_disk_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let spec = sample(b"binary");
        let l = layout(&spec).unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        write(&l, spec.created, &a, &dir.path().join("a.tar")).unwrap();
        write(&l, spec.created, &b, &dir.path().join("b.tar")).unwrap();
        // oci-layout, index.json, blobs/, blobs/sha256/ and three blobs.
        assert_eq!(tree(&a).unwrap().len(), 7);
        assert_eq!(
            std::fs::read(dir.path().join("a.tar")).unwrap(),
            std::fs::read(dir.path().join("b.tar")).unwrap()
        );
    }

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_796_008_801), "2026-11-30T03:20:01Z");
        assert_eq!(rfc3339(1_709_210_096), "2024-02-29T12:34:56Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn elf_interpreter() {
        // This test binary is linked against glibc: it names its loader.
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert!(has_interpreter(&me).unwrap());
        // The same header with its PT_INTERP entry renamed to PT_NULL.
        let mut patched = me.clone();
        let phoff = u64::from_le_bytes(me[0x20..0x28].try_into().unwrap()) as usize;
        let (size, num) = (
            u16::from_le_bytes([me[0x36], me[0x37]]) as usize,
            u16::from_le_bytes([me[0x38], me[0x39]]) as usize,
        );
        for i in 0..num {
            let at = phoff + i * size;
            if me[at..at + 4] == 3u32.to_le_bytes() {
                patched[at..at + 4].copy_from_slice(&0u32.to_le_bytes());
            }
        }
        assert!(!has_interpreter(&patched).unwrap());
        assert!(has_interpreter(b"#!/bin/sh\n").is_err());
    }
}
