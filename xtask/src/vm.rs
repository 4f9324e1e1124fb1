//! `cargo xtask vm-test`: the redirector on Debian's 6.1 kernel (the EKS AL2023/Bottlerocket
//! line) under qemu.
//!
//! The kernel comes from Debian's `linux-image-cloud-amd64` (cgroup bpf, bpffs and BTF are
//! built in, no modules needed), cached in `<cache>/vm/`. The VM boots a busybox initramfs
//! holding `lattice-redirector` and the shared libraries it links; its `/init` runs `doctor`,
//! then the agent and real connects from cgroups and GIDs that must and must not be
//! redirected, then the whole kernel test suite (redirector/tests/kernel.rs, with iproute2's
//! `ip` for its network namespaces), and prints `RESULT` lines on the serial console, which
//! this task parses. There is no network in the VM: everything happens on its loopback.

use crate::ebpf;
use crate::setup::{self, step};
use anyhow::{bail, Context, Result};
use clap::Args;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Debian packages the VM test uses (binutils for `strip`, to keep the initramfs small;
/// iproute2 for `ip netns`, which the kernel tests use and busybox lacks).
const PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "busybox-static",
    "cpio",
    "binutils",
    "iproute2",
];

/// The Debian metapackage that names the current 6.1 cloud kernel image.
const DEFAULT_KERNEL_PACKAGE: &str = "linux-image-cloud-amd64";

/// The `RESULT` checks the VM must report, with the value each must have
/// (`None`: a number ≥ 1).
const REQUIRED: &[(&str, Option<&str>)] = &[
    ("doctor", Some("ok")),
    ("agent-ready", Some("ok")),
    ("redirect-v4", Some("ok")),
    ("redirect-v6", Some("ok")),
    ("gid0-not-redirected", Some("ok")),
    ("not-enrolled-not-redirected", Some("ok")),
    ("status-redirected", None),
    ("uninstall", Some("ok")),
    ("after-uninstall-not-redirected", Some("ok")),
];

/// Options of `cargo xtask vm-test`.
#[derive(Debug, Args)]
pub struct VmTest {
    /// Boot this kernel image (a bzImage) instead of Debian's 6.1 cloud kernel.
    #[arg(long)]
    pub kernel: Option<PathBuf>,
    /// Debian package whose kernel to boot; a metapackage is resolved to its image package.
    #[arg(long, default_value = DEFAULT_KERNEL_PACKAGE)]
    pub kernel_package: String,
    /// Seconds before the VM is killed and the test fails.
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
    /// qemu accelerator; KVM fails on some hosts ("emulation failure"), hence tcg.
    #[arg(long, default_value = "tcg")]
    pub accel: String,
    /// Skip the redirector's kernel test suite (redirector/tests/kernel.rs) in the VM and
    /// run only doctor and the busybox scenario.
    #[arg(long)]
    pub no_kernel_tests: bool,
    /// Boot the VM this many times (one build) and stop at the first failed run: a check
    /// that passes or fails by timing shows up here.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub repeat: u32,
}

impl Default for VmTest {
    /// The same as `cargo xtask vm-test` with no option.
    fn default() -> Self {
        VmTest {
            kernel: None,
            kernel_package: DEFAULT_KERNEL_PACKAGE.to_string(),
            timeout: 300,
            accel: "tcg".to_string(),
            no_kernel_tests: false,
            repeat: 1,
        }
    }
}

/// Fetches the kernel, builds the agent and the initramfs, boots the VM and checks its
/// `RESULT` lines; fails unless every check passed.
pub fn run(opts: &VmTest) -> Result<()> {
    setup::apt_install(PACKAGES)?;
    let kernel = match &opts.kernel {
        Some(k) => {
            anyhow::ensure!(k.is_file(), "--kernel {}: no such file", k.display());
            k.clone()
        }
        None => debian_kernel(&opts.kernel_package)?,
    };
    step(&format!("kernel image: {}", kernel.display()));

    ebpf::run(&ebpf::BuildEbpf {})?;
    let root = setup::workspace_root();
    // lattice-proxy too: a kernel test runs the real sidecar's readiness check.
    step("cargo build -p lattice-redirector -p lattice-proxy");
    setup::run(Command::new("cargo").current_dir(&root).args([
        "build",
        "-p",
        "lattice-redirector",
        "-p",
        "lattice-proxy",
    ]))
    .context("building the binaries failed (see the compiler output above)")?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let agent = target.join("debug/lattice-redirector");
    anyhow::ensure!(
        agent.is_file(),
        "the build succeeded but {} is missing",
        agent.display()
    );

    let kernel_tests = if opts.no_kernel_tests {
        None
    } else {
        Some(kernel_test_binary(&root)?)
    };

    let work = target.join("vm-test");
    let initramfs = build_initramfs(&agent, kernel_tests.as_deref(), &work)?;
    for run in 1..=opts.repeat {
        if opts.repeat > 1 {
            step(&format!("vm-test run {run} of {}", opts.repeat));
        }
        let lines = boot(opts, &kernel, &initramfs)?;
        judge(&lines, !opts.no_kernel_tests)
            .with_context(|| format!("run {run} of {} failed", opts.repeat))?;
    }
    if opts.repeat > 1 {
        println!("vm-test: {} runs in a row ok", opts.repeat);
    }
    Ok(())
}

/// Builds redirector/tests/kernel.rs and returns its test binary.
fn kernel_test_binary(root: &Path) -> Result<PathBuf> {
    step("cargo test -p lattice-redirector --test kernel --no-run");
    let out = setup::output(
        Command::new("cargo")
            .current_dir(root)
            .args(["test", "-p", "lattice-redirector", "--test", "kernel"])
            .args(["--no-run", "--message-format=json"]),
    )
    .context("building the kernel tests failed; see `cargo test -p lattice-redirector --test kernel --no-run`")?;
    // The artifact line of the test target: `..."name":"kernel",..."executable":"/…"`.
    out.lines()
        .filter(|l| l.contains("\"name\":\"kernel\""))
        .find_map(|l| {
            let at = l.find("\"executable\":\"")? + "\"executable\":\"".len();
            let end = l[at..].find('"')?;
            Some(PathBuf::from(&l[at..at + end]))
        })
        .context("cargo built the kernel tests but named no executable")
}

/// Resolves `package` to a kernel image package, downloads and unpacks it once into
/// `<cache>/vm/<image>/` and returns its `vmlinuz`.
fn debian_kernel(package: &str) -> Result<PathBuf> {
    let dir = setup::cache_dir().join("vm");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let image = image_package(package)?;
    if package == DEFAULT_KERNEL_PACKAGE && !image.starts_with("linux-image-6.1.") {
        bail!(
            "{package} resolves to {image} here, not a 6.1 kernel (the EKS AL2023/Bottlerocket \
             line): this host's apt sources are not Debian 12 (bookworm); add bookworm's \
             sources, or pass `--kernel-package linux-image-6.1.0-NN-cloud-amd64` or \
             `--kernel PATH-TO-BZIMAGE`"
        );
    }
    let unpacked = dir.join(&image);
    if let Some(vmlinuz) = find_vmlinuz(&unpacked) {
        step(&format!("using the cached {image}"));
        return Ok(vmlinuz);
    }

    step(&format!(
        "downloading {image} (Debian kernel package, ~27 MB) into {}",
        dir.display()
    ));
    let download = || {
        setup::run(
            Command::new("apt-get")
                .current_dir(&dir)
                // The download lands in a root-owned directory: no _apt sandbox.
                .args(["-q", "-o", "APT::Sandbox::User=root", "download", &image]),
        )
    };
    if download().is_err() {
        step("apt-get update (the package lists may be stale), then downloading again");
        setup::run(Command::new("apt-get").args(["update", "-q"]))
            .context("apt-get update failed; are you root with the Debian mirror reachable?")?;
        download().with_context(|| {
            format!(
                "could not download {image}; try `cd {} && apt-get download {image}` by hand",
                dir.display()
            )
        })?;
    }
    let prefix = format!("{image}_");
    let mut debs: Vec<PathBuf> = std::fs::read_dir(&dir)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .map(|n| n.to_string_lossy())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
        })
        .collect();
    debs.sort();
    let deb = debs.pop().with_context(|| {
        format!(
            "apt-get download left no {image}_*.deb in {}",
            dir.display()
        )
    })?;

    step(&format!("unpacking {} (boot/ only)", deb.display()));
    let tmp = dir.join(format!("{image}.unpacking"));
    let _ = std::fs::remove_dir_all(&tmp);
    setup::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tmp))?;
    std::fs::create_dir_all(&unpacked)?;
    for entry in std::fs::read_dir(tmp.join("boot"))
        .with_context(|| format!("{} holds no boot/", deb.display()))?
        .flatten()
    {
        std::fs::copy(entry.path(), unpacked.join(entry.file_name()))?;
    }
    // The modules are not needed (what the agent uses is built in) and weigh ~80 MB.
    std::fs::remove_dir_all(&tmp)?;
    std::fs::remove_file(&deb)?;
    let vmlinuz = find_vmlinuz(&unpacked)
        .with_context(|| format!("{} holds no boot/vmlinuz-*", deb.display()))?;
    if let Some(config) = find_prefixed(&unpacked, "config-") {
        check_config(&config)?;
    }
    Ok(vmlinuz)
}

/// `linux-image-cloud-amd64` → `linux-image-6.1.0-56-cloud-amd64` (its image dependency);
/// an image package is returned as it is.
fn image_package(package: &str) -> Result<String> {
    let out =
        setup::output(Command::new("apt-cache").args(["depends", package])).with_context(|| {
            format!(
                "apt does not know {package}: the VM test boots Debian 12 (bookworm)'s cloud \
                 kernel; run on Debian 12, add its apt sources, or pass `--kernel PATH`"
            )
        })?;
    let dep = out
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends:"))
        .map(str::trim)
        .find(|d| d.starts_with("linux-image-"));
    Ok(dep.unwrap_or(package).to_string())
}

fn find_prefixed(dir: &Path, prefix: &str) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(prefix))
        })
        .collect();
    found.sort();
    found.pop()
}

fn find_vmlinuz(dir: &Path) -> Option<PathBuf> {
    find_prefixed(dir, "vmlinuz-")
}

/// Fails when the kernel lacks, built in, what the agent and the initramfs need.
fn check_config(config: &Path) -> Result<()> {
    let text = std::fs::read_to_string(config)?;
    let missing: Vec<&str> = [
        "CONFIG_BPF_SYSCALL",
        "CONFIG_CGROUP_BPF",
        "CONFIG_DEBUG_INFO_BTF",
        "CONFIG_BLK_DEV_INITRD",
        "CONFIG_DEVTMPFS",
        "CONFIG_SERIAL_8250_CONSOLE",
        "CONFIG_IPV6",
    ]
    .into_iter()
    .filter(|opt| !text.lines().any(|l| l == format!("{opt}=y")))
    .collect();
    if !missing.is_empty() {
        bail!(
            "{} does not build in {}: the VM test needs them built in (no modules are \
             loaded); use another kernel with --kernel",
            config.display(),
            missing.join(", ")
        );
    }
    Ok(())
}

/// The files of the initramfs besides the binaries: `/init`, users and groups.
const INIT: &str = r#"#!/bin/busybox sh
# /init of the vm-test initramfs (PID 1): RESULT lines are what `cargo xtask vm-test` parses.
/bin/busybox --install -s /bin
export PATH=/sbin:/bin LD_LIBRARY_PATH=@LIB_DIRS@ RUST_BACKTRACE=1
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sysfs /sys
# No tmpfs over /tmp or /run: the initramfs root is already writable, and the host paths
# the binaries are linked at (a checkout under /tmp, say) must stay visible.
mkdir -p /tmp /run
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t bpf bpf /sys/fs/bpf
ip link set lo up
R=/bin/lattice-redirector
CG=/sys/fs/cgroup/le
echo "RESULT kernel $(uname -r)"

echo "--- lattice-redirector doctor"
if $R doctor >/tmp/doctor 2>&1; then d=ok; else d=FAIL; fi
sed 's/^/DOCTOR /' /tmp/doctor
echo "RESULT doctor $d"

echo "--- lattice-redirector run"
mkdir -p $CG/app $CG/other
$R run --attach-cgroup $CG --cgroup $CG/app --admin-addr 127.0.0.1:15090 >/tmp/agent.log 2>&1 &
agent=$!
ready=FAIL
i=0
while [ $i -lt 60 ]; do
    # (Debian's busybox wget crashes with -T: `timeout` bounds it instead.)
    if timeout 10 wget -q -O /tmp/health http://127.0.0.1:15090/healthz 2>/dev/null; then ready=ok; break; fi
    kill -0 $agent 2>/dev/null || break
    sleep 0.5
    i=$((i + 1))
done
echo "RESULT agent-ready $ready"

# probe NAME CGROUP USER ADDRESS: connects to ADDRESS port 80 from CGROUP as USER while a
# listener on the proxy port 15001 answers each line with "ack-LINE". The client's output
# decides: it holds the ack only if the connection reached the listener, and the client
# exits only once the listener has answered and closed (or the connect failed), so nothing
# here waits for time.
printf '#!/bin/sh\nread line\necho "ack-$line"\n' >/bin/probe-ack
chmod +x /bin/probe-ack
probe() {
    nc -l -p 15001 -e /bin/probe-ack >/dev/null 2>&1 &
    l=$!
    j=0
    while ! netstat -ltn | grep -q ':15001 ' && [ $j -lt 600 ]; do sleep 0.1; j=$((j + 1)); done
    sh -c "echo \$\$ >$2/cgroup.procs && exec su -s /bin/sh $3 -c 'id; echo lattice-vm-test-$1 | nc -w 30 $4 80'" >/tmp/client 2>&1
    c=$?
    kill $l 2>/dev/null
    wait $l 2>/dev/null
    echo "probe $1 (client exit $c): $(tr '\n' ' ' </tmp/client)"
    if grep -q "ack-lattice-vm-test-$1" /tmp/client; then echo redirected >/tmp/verdict; else echo direct >/tmp/verdict; fi
}
expect() {
    if [ "$(cat /tmp/verdict)" = "$2" ]; then echo "RESULT $1 ok"; else echo "RESULT $1 FAIL"; fi
}
probe v4 $CG/app app 169.254.171.5
expect redirect-v4 redirected
probe v6 $CG/app app fd00:ec2:80::5
expect redirect-v6 redirected
probe gid0 $CG/app root 169.254.171.5
expect gid0-not-redirected direct
probe other $CG/other app 169.254.171.5
expect not-enrolled-not-redirected direct

echo "--- lattice-redirector status"
$R status >/tmp/status 2>&1
sed 's/^/STATUS /' /tmp/status
echo "RESULT status-redirected $(awk '$1 == "redirected" { print $2 }' /tmp/status)"

kill $agent 2>/dev/null
wait $agent 2>/dev/null
echo "--- lattice-redirector uninstall"
if $R uninstall; then u=ok; else u=FAIL; fi
echo "RESULT uninstall $u"
probe after-uninstall $CG/app app 169.254.171.5
expect after-uninstall-not-redirected direct

if [ -x /bin/kernel-tests ]; then
    echo "--- redirector/tests/kernel.rs"
    if /bin/kernel-tests --test-threads=1 >/tmp/ktests 2>&1; then k=ok; else k=FAIL; fi
    sed 's/^/KTEST /' /tmp/ktests
    echo "RESULT kernel-tests-summary $(grep '^test result:' /tmp/ktests | tail -n 1)"
    echo "RESULT kernel-tests $k"
fi
sed 's/^/AGENT /' /tmp/agent.log
echo "RESULT done"
sync
poweroff -f
"#;
const PASSWD: &str = "root:x:0:0:root:/:/bin/sh\napp:x:1000:1000:app:/:/bin/sh\n";
const GROUP: &str = "root:x:0:\napp:x:1000:\n";

/// Lays out busybox, the agent (stripped), the libraries it links, `/init`, and packs them
/// with cpio into `<work>/initramfs.cpio`.
fn build_initramfs(agent: &Path, kernel_tests: Option<&Path>, work: &Path) -> Result<PathBuf> {
    step("building the busybox initramfs");
    let tree = work.join("root");
    let _ = std::fs::remove_dir_all(&tree);
    for dir in ["bin", "etc", "proc", "sys", "dev", "tmp", "run", "root"] {
        std::fs::create_dir_all(tree.join(dir))
            .with_context(|| format!("creating {}", tree.join(dir).display()))?;
    }

    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(Path::new)
        .find(|p| p.is_file())
        .context("no /bin/busybox: install it with `apt-get install busybox-static`")?;
    let ldd = Command::new("ldd").arg(busybox).output();
    if ldd.is_ok_and(|o| o.status.success()) {
        bail!(
            "{} is dynamically linked (the `busybox` package); the initramfs needs \
             `apt-get install busybox-static`",
            busybox.display()
        );
    }
    copy_executable(busybox, &tree.join("bin/busybox"))?;

    strip_into(agent, &tree.join("bin/lattice-redirector"))?;

    let mut binaries = vec![agent.to_path_buf()];
    if let Some(tests) = kernel_tests {
        // The tests start the agent by its build path (CARGO_BIN_EXE_lattice-redirector).
        // They find lattice-proxy beside it.
        let proxy = agent.with_file_name("lattice-proxy");
        strip_into(&proxy, &tree.join("bin/lattice-proxy"))?;
        binaries.push(proxy.clone());
        for (built, inside) in [
            (agent, "/bin/lattice-redirector"),
            (&proxy, "/bin/lattice-proxy"),
        ] {
            let link = tree.join(built.strip_prefix("/").unwrap_or(built));
            std::fs::create_dir_all(link.parent().expect("a file has a parent"))?;
            std::os::unix::fs::symlink(inside, &link)
                .with_context(|| format!("linking {}", link.display()))?;
        }
        strip_into(tests, &tree.join("bin/kernel-tests"))?;
        binaries.push(tests.to_path_buf());
        let ip = ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"]
            .iter()
            .map(Path::new)
            .find(|p| p.is_file())
            .context("no `ip` binary: install it with `apt-get install iproute2`")?;
        std::fs::create_dir_all(tree.join("sbin"))?;
        copy_executable(ip, &tree.join("sbin/ip"))?;
        binaries.push(ip.to_path_buf());
    }

    let mut libs: Vec<PathBuf> = Vec::new();
    for binary in &binaries {
        for lib in shared_libraries(binary)? {
            if !libs.contains(&lib) {
                libs.push(lib);
            }
        }
    }
    let mut lib_dirs: Vec<String> = Vec::new();
    for lib in libs {
        let inside = tree.join(lib.strip_prefix("/").unwrap_or(&lib));
        if let Some(parent) = inside.parent() {
            std::fs::create_dir_all(parent)?;
            let dir = lib.parent().unwrap_or(Path::new("/")).display().to_string();
            if !lib_dirs.contains(&dir) {
                lib_dirs.push(dir);
            }
        }
        // Follows symlinks: the library lands as a file at the path the loader asks for.
        std::fs::copy(&lib, &inside)
            .with_context(|| format!("copying {} into the initramfs", lib.display()))?;
    }

    let init = INIT.replace("@LIB_DIRS@", &lib_dirs.join(":"));
    write_file(&tree.join("init"), &init, 0o755)?;
    write_file(&tree.join("etc/passwd"), PASSWD, 0o644)?;
    write_file(&tree.join("etc/group"), GROUP, 0o644)?;

    let cpio = work.join("initramfs.cpio");
    setup::run(
        Command::new("sh")
            .current_dir(&tree)
            .args([
                "-c",
                "find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet > \"$1\"",
                "sh",
            ])
            .arg(&cpio),
    )
    .context("packing the initramfs failed: is cpio installed (`apt-get install cpio`)?")?;
    let size = std::fs::metadata(&cpio)?.len();
    step(&format!(
        "initramfs: {} ({} MiB)",
        cpio.display(),
        size / (1024 * 1024)
    ));
    Ok(cpio)
}

/// The shared libraries `binary` loads, the dynamic loader included, from `ldd`.
fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let out = setup::output(Command::new("ldd").arg(binary))
        .with_context(|| format!("ldd {} failed (is libc-bin installed?)", binary.display()))?;
    let mut libs = Vec::new();
    for line in out.lines() {
        // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)` or
        // `/lib64/ld-linux-x86-64.so.2 (0x…)`; the vdso has no file.
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(path) = path.filter(|p| p.starts_with('/')) {
            libs.push(PathBuf::from(path));
        } else if line.contains("not found") {
            bail!(
                "{} needs a library that is not installed: {line}",
                binary.display()
            );
        }
    }
    anyhow::ensure!(
        !libs.is_empty(),
        "ldd found no libraries in {}: is it dynamically linked?",
        binary.display()
    );
    Ok(libs)
}

/// Copies `from` to `to` without debug information (the debug build is ~90 MB).
fn strip_into(from: &Path, to: &Path) -> Result<()> {
    let stripped = Command::new("strip")
        .arg("-o")
        .arg(to)
        .arg(from)
        .status()
        .is_ok_and(|s| s.success());
    if !stripped {
        step(&format!(
            "strip failed or is missing (binutils): copying {} unstripped",
            from.display()
        ));
        copy_executable(from, to)?;
    }
    Ok(())
}

fn copy_executable(from: &Path, to: &Path) -> Result<()> {
    std::fs::copy(from, to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    set_mode(to, 0o755)
}

fn write_file(path: &Path, text: &str, mode: u32) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    set_mode(path, mode)
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", path.display()))
}

/// Boots the VM, echoing its console, and returns the console's lines; kills it after the
/// timeout.
fn boot(opts: &VmTest, kernel: &Path, initramfs: &Path) -> Result<Vec<String>> {
    let qemu = "qemu-system-x86_64";
    let mut cmd = Command::new(qemu);
    cmd.args([
        "-accel",
        &opts.accel,
        "-cpu",
        "max",
        "-m",
        "1024",
        "-smp",
        "1",
    ])
    .args(["-nographic", "-no-reboot", "-nic", "none"])
    .arg("-kernel")
    .arg(kernel)
    .arg("-initrd")
    .arg(initramfs)
    .args(["-append", "console=ttyS0 panic=-1 quiet"])
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    step(&format!(
        "booting the VM ({qemu}, -accel {}, timeout {} s); its console follows",
        opts.accel, opts.timeout
    ));
    let mut child = cmd.spawn().with_context(|| {
        format!("could not start {qemu}: install it with `apt-get install qemu-system-x86`")
    })?;

    let (tx, rx) = mpsc::channel::<String>();
    let stdout = child.stdout.take().expect("stdout is piped");
    let reader = std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut buf = Vec::new();
        while reader
            .read_until(b'\n', &mut buf)
            .map(|n| n > 0)
            .unwrap_or(false)
        {
            let line =
                without_escapes(String::from_utf8_lossy(&buf).trim_end_matches(['\r', '\n']));
            buf.clear();
            eprintln!("  vm| {line}");
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut stderr = child.stderr.take().expect("stderr is piped");
    let errors = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });

    let deadline = Instant::now() + Duration::from_secs(opts.timeout);
    let mut lines = Vec::new();
    let mut timed_out = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            timed_out = true;
            break;
        }
        match rx.recv_timeout(left.min(Duration::from_millis(500))) {
            Ok(line) => lines.push(line),
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    if timed_out {
        let _ = child.kill();
    }
    let status = child.wait()?;
    let _ = reader.join();
    let errors = errors.join().unwrap_or_default();
    if timed_out {
        bail!(
            "the VM did not finish within {} s (raise --timeout; under TCG it is slow){}",
            opts.timeout,
            summary_hint(&lines)
        );
    }
    if lines.iter().all(|l| marked(l, "RESULT ").is_none()) {
        bail!(
            "the VM reported nothing (qemu exited with {status}){}{}",
            if errors.trim().is_empty() {
                String::new()
            } else {
                format!("; qemu said: {}", errors.trim())
            },
            summary_hint(&lines)
        );
    }
    Ok(lines)
}

/// `line` without terminal escape sequences (the firmware clears the screen) and control
/// characters.
fn without_escapes(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters final-byte; other escapes are two characters.
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
        } else if !c.is_control() || c == '\t' {
            out.push(c);
        }
    }
    out
}

/// What follows `marker` in a console line (the firmware's terminal escapes may precede it).
fn marked<'a>(line: &'a str, marker: &str) -> Option<&'a str> {
    line.find(marker)
        .map(|at| line[at + marker.len()..].trim_end())
}

fn summary_hint(lines: &[String]) -> String {
    match lines.iter().rev().find(|l| !l.trim().is_empty()) {
        Some(last) => format!("; the console's last line: {last}"),
        None => "; the console stayed empty".into(),
    }
}

/// Prints the kernel, doctor's lines and the results; fails unless every check passed.
fn judge(lines: &[String], kernel_tests: bool) -> Result<()> {
    let mut results: BTreeMap<&str, &str> = BTreeMap::new();
    for line in lines {
        if let Some(rest) = marked(line, "RESULT ") {
            let (name, value) = rest.split_once(' ').unwrap_or((rest, ""));
            results.insert(name, value.trim());
        }
    }
    println!();
    println!(
        "kernel: {}",
        results.get("kernel").copied().unwrap_or("(not reported)")
    );
    println!("doctor:");
    for line in lines {
        if let Some(rest) = marked(line, "DOCTOR ") {
            println!("  {rest}");
        }
    }
    if let Some(summary) = results.get("kernel-tests-summary") {
        println!("kernel tests (redirector/tests/kernel.rs): {summary}");
        for line in lines {
            if let Some(rest) = marked(line, "KTEST test ").filter(|r| r.contains(" ... ")) {
                println!("  {rest}");
            }
        }
    }
    let mut failed = Vec::new();
    let suite = [("kernel-tests", Some("ok"))];
    let extra: &[(&str, Option<&str>)] = if kernel_tests { &suite } else { &[] };
    for (name, want) in REQUIRED.iter().chain(extra) {
        let got = results.get(name).copied();
        let ok = match (want, got) {
            (Some(want), Some(got)) => got == *want,
            (None, Some(got)) => got.parse::<u64>().is_ok_and(|n| n >= 1),
            (_, None) => false,
        };
        println!(
            "RESULT {:<30} {:<4} {}",
            name,
            if ok { "ok" } else { "FAIL" },
            got.unwrap_or("(not reported)")
        );
        if !ok {
            failed.push(*name);
        }
    }
    if !failed.is_empty() {
        bail!(
            "vm-test failed on {}: {} (the VM's console above has the details)",
            results.get("kernel").copied().unwrap_or("the VM's kernel"),
            failed.join(", ")
        );
    }
    println!(
        "vm-test: ok on {}",
        results.get("kernel").copied().unwrap_or("?")
    );
    Ok(())
}
