//! Every `unsafe` block of the agent, in one place: the system calls and
//! `pre_exec` hooks of host tasks (`process`), the loopback of a task's
//! network namespace (`net`), the libibverbs FFI of RDMA discovery (`verbs`) and
//! glibc's malloc settings (`memory`). Each block says why it is sound; the rest of the
//! crate is `unsafe_code = "deny"` and calls the safe functions here.
#![allow(unsafe_code)]

pub mod memory;
pub mod net;
pub mod process;
#[cfg(feature = "rdma")]
pub mod verbs;

#[cfg(test)]
mod tests {
    /// No file outside `sys/` may opt out of `unsafe_code = "deny"`.
    #[test]
    fn unsafe_code_lives_here_only() {
        fn walk(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
            for e in std::fs::read_dir(dir).unwrap().flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, out);
                } else if p.extension().is_some_and(|x| x == "rs") {
                    out.push(p);
                }
            }
        }
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        walk(&src, &mut files);
        let opt_out = ["allow(", "unsafe_code)"].concat();
        let offenders: Vec<_> = files
            .iter()
            .filter(|p| !p.starts_with(src.join("sys")))
            .filter(|p| std::fs::read_to_string(p).unwrap().contains(&opt_out))
            .collect();
        assert!(files.len() > 50, "{} files under {}", files.len(), src.display());
        assert!(offenders.is_empty(), "unsafe code outside agent/src/sys: {offenders:?}");
    }
}
