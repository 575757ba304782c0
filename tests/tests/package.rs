//! The Debian package (scripts/package): scripts/package-test builds it from the
//! binaries under test, checks the archive with dpkg-deb, installs it with
//! `dpkg --root` into a fresh root (its maintainer scripts run there, chrooted,
//! under a static busybox) and checks the files and their modes, that a changed
//! conffile survives a reinstall, that remove keeps the config and purge removes
//! config and state. It needs root, as scripts/test runs.

use std::path::PathBuf;
use std::process::Command;

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

#[test]
fn debian_package_installs_keeps_a_changed_config_removes_and_purges() {
    let bin = berth_tests::binary("berth-agent");
    berth_tests::binary("berthctl");
    let out = Command::new(workspace().join("scripts/package-test"))
        .env("BERTH_BIN_DIR", bin.parent().unwrap())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.contains("package-test: PASS"),
        "scripts/package-test: {}\n{stdout}\n{stderr}",
        out.status
    );
    assert!(!stdout.contains("FAIL"), "{stdout}");
}
