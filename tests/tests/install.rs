//! scripts/install into a temporary root (as packaging and CI use it: there is
//! no systemd here): every file in place, idempotent, and --uninstall removes
//! what it installed but keeps a config the operator changed.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

fn install(root: &Path, args: &[&str]) {
    let bin = berth_tests::binary("berth-agent");
    let out = Command::new(workspace().join("scripts/install"))
        .args(args)
        .env("DESTDIR", root)
        .env("BERTH_BIN_DIR", bin.parent().unwrap())
        .output()
        .unwrap();
    assert!(out.status.success(), "scripts/install {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn files(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn installs_into_a_root_idempotently_and_uninstalls() {
    let root = tempfile::tempdir().unwrap();
    install(root.path(), &[]);
    let want = [
        "etc/berth/agent.toml",
        "etc/systemd/system/berth-agent.service",
        "usr/local/bin/berth-agent",
        "usr/local/bin/berthctl",
        "usr/local/share/doc/berth/BENCHMARKS.md",
        "usr/local/share/doc/berth/README.md",
        "usr/local/share/doc/berth/run-options.md",
        "var/lib/berth/install-manifest",
        "var/lib/berth/install-manifest.dirs",
    ];
    assert_eq!(files(root.path()), want);
    assert!(root.path().join("etc/cdi").is_dir());
    let mode = |p: &str| std::fs::metadata(root.path().join(p)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode("usr/local/bin/berth-agent"), 0o755);
    assert_eq!(mode("etc/berth/agent.toml"), 0o640, "the config may hold credentials");
    let unit = std::fs::read_to_string(root.path().join("etc/systemd/system/berth-agent.service")).unwrap();
    assert!(
        unit.contains("Type=notify")
            && unit.contains("KillMode=process")
            && unit.contains("Requires=containerd.service")
    );
    // The example config is valid.
    let check = Command::new(root.path().join("usr/local/bin/berth-agent"))
        .arg("--config")
        .arg(root.path().join("etc/berth/agent.toml"))
        .arg("--check-config")
        .output()
        .unwrap();
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));

    // Again: the same files, nothing doubled.
    install(root.path(), &[]);
    assert_eq!(files(root.path()), want);
    let manifest = std::fs::read_to_string(root.path().join("var/lib/berth/install-manifest")).unwrap();
    assert_eq!(manifest.lines().count(), 7, "{manifest}");

    // Uninstall: everything goes.
    install(root.path(), &["--uninstall"]);
    assert!(files(root.path()).is_empty(), "{:?}", files(root.path()));
    assert!(!root.path().join("etc/cdi").exists() && !root.path().join("usr/local/share/doc/berth").exists());

    // A config the operator changed stays.
    install(root.path(), &[]);
    std::fs::write(root.path().join("etc/berth/agent.toml"), "[node]\ntask_slots = 8\n").unwrap();
    install(root.path(), &[]);
    assert_eq!(std::fs::read_to_string(root.path().join("etc/berth/agent.toml")).unwrap(), "[node]\ntask_slots = 8\n");
    install(root.path(), &["--uninstall"]);
    assert_eq!(files(root.path()), ["etc/berth/agent.toml"]);
}
