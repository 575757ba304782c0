//! The baseline: containerd's own CLI, a fresh process per container, as
//! `ctr run --rm` and `ctr pull` are used by hand.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Clone)]
pub(crate) struct Ctr {
    pub socket: String,
    pub namespace: String,
    /// Where `ctr run` puts its IO FIFOs (visible to containerd).
    pub fifo_dir: String,
}

impl Ctr {
    fn cmd(&self) -> Command {
        let mut c = Command::new("ctr");
        c.args(["--address", &self.socket, "--namespace", &self.namespace])
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        c
    }

    /// `ctr images pull --plain-http`: its wall time.
    pub(crate) fn pull(&self, image: &str) -> Duration {
        let start = Instant::now();
        let out = self.cmd().args(["images", "pull", "--plain-http", image]).output().expect("ctr pull");
        assert!(out.status.success(), "ctr pull {image}: {}", String::from_utf8_lossy(&out.stderr));
        start.elapsed()
    }

    /// `ctr images rm --sync`: the image and, through containerd's GC, its content and snapshots.
    pub(crate) fn remove_image(&self, image: &str) {
        let out = self.cmd().args(["images", "rm", "--sync", image]).output().expect("ctr images rm");
        assert!(out.status.success(), "ctr images rm {image}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// `ctr run --rm IMAGE ID /bin/true`: create, start, wait, delete.
    pub(crate) fn run(&self, image: &str, id: &str) -> Duration {
        let start = Instant::now();
        let out = self
            .cmd()
            .args(["run", "--rm", "--fifo-dir", &self.fifo_dir, image, id, "/bin/true"])
            .output()
            .expect("ctr run");
        assert!(out.status.success(), "ctr run {id}: {}", String::from_utf8_lossy(&out.stderr));
        start.elapsed()
    }
}
