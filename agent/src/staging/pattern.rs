//! Batch's `filePattern`: `$NAME`/`${NAME}` expanded from the task's
//! environment; relative to the working directory or absolute (inside the
//! node root); `*`, `?`, `[a-c]`, `[!abc]` within a name, `**` for any
//! number of directories; a name starting with `.` only matches a pattern
//! that names the dot. The part before the first wildcard is the base: a
//! match's blob name is its path below the base (under `path`), and a
//! pattern without wildcards names one file (its blob name is `path`, or
//! the file's name).

use super::fs::may;
use crate::model::RunAs;
use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

/// Entries a pattern's walk looks at, at most.
const MAX_WALK: usize = 200_000;

/// A file an output pattern matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Match {
    /// Below the node root.
    pub rel: PathBuf,
    /// The blob name it goes to.
    pub blob: String,
}

/// Expands `$NAME` and `${NAME}`; unknown names expand to nothing.
pub fn expand(pattern: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = pattern;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let (name, tail) = if let Some(braced) = after.strip_prefix('{') {
            match braced.find('}') {
                Some(j) => (&braced[..j], &braced[j + 1..]),
                None => ("", after),
            }
        } else {
            let j = after.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(after.len());
            (&after[..j], &after[j..])
        };
        if name.is_empty() {
            out.push('$');
            rest = after;
        } else {
            out.push_str(env.get(name).map_or("", String::as_str));
            rest = tail;
        }
    }
    out.push_str(rest);
    out
}

fn is_wild(component: &str) -> bool {
    component.contains(['*', '?', '['])
}

/// Lexically normalised (`.` and `..` resolved), or None if it climbs above `/`.
fn normalise(p: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::RootDir => out.push("/"),
            Component::CurDir | Component::Prefix(_) => {}
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::Normal(n) => out.push(n),
        }
    }
    Some(out)
}

/// The files `pattern` (already expanded) matches, for `who`. Errors are the
/// task's: a pattern outside the node root, or a walk that is too large.
pub fn find(root: &Path, wd: &Path, pattern: &str, path: &str, who: &RunAs) -> Result<Vec<Match>, String> {
    let comps: Vec<&str> = pattern.split('/').collect();
    let first_wild = comps.iter().position(|c| is_wild(c));
    let fixed = match first_wild {
        Some(i) => comps[..i].join("/"),
        None => pattern.to_owned(),
    };
    let fixed = if fixed.is_empty() && pattern.starts_with('/') { "/".to_owned() } else { fixed };
    let base = normalise(&wd.join(&fixed)).ok_or_else(|| format!("{pattern:?} climbs above /"))?;
    let Ok(base_rel) = base.strip_prefix(root) else {
        return Err(format!("{pattern:?} is outside the node root {}", root.display()));
    };
    let base_rel = base_rel.to_path_buf();
    let Some(i) = first_wild else {
        // One named file: there or not.
        let meta = std::fs::symlink_metadata(&base);
        if !meta.is_ok_and(|m| m.is_file()) {
            return Ok(vec![]);
        }
        let name = base.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let blob = if path.is_empty() { name } else { path.to_owned() };
        return Ok(vec![Match { rel: base_rel, blob }]);
    };
    let glob = glob::Pattern::new(&comps[i..].join("/")).map_err(|e| format!("{pattern:?}: {e}"))?;
    let opts =
        glob::MatchOptions { case_sensitive: true, require_literal_separator: true, require_literal_leading_dot: true };
    let mut found = Vec::new();
    let mut seen = 0usize;
    let mut stack = vec![PathBuf::new()];
    while let Some(dir_rel) = stack.pop() {
        let dir = base.join(&dir_rel);
        let Ok(meta) = std::fs::symlink_metadata(&dir) else { continue };
        // Only what the task's user could list itself.
        if !meta.is_dir() || !may(&meta, who, 5) {
            continue;
        }
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for e in entries.flatten() {
            seen += 1;
            if seen > MAX_WALK {
                return Err(format!("{pattern:?} walks more than {MAX_WALK} entries"));
            }
            let Ok(ft) = e.file_type() else { continue };
            let rel = dir_rel.join(e.file_name());
            if ft.is_dir() {
                stack.push(rel);
            } else if ft.is_file() {
                let Some(s) = rel.to_str() else { continue };
                if glob.matches_with(s, opts) {
                    let blob =
                        if path.is_empty() { s.to_owned() } else { format!("{}/{s}", path.trim_end_matches('/')) };
                    found.push(Match { rel: base_rel.join(&rel), blob });
                }
            }
        }
    }
    found.sort_by(|a, b| a.rel.cmp(&b.rel));
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for f in [
            "task/wd/a.txt",
            "task/wd/b.log",
            "task/wd/.hidden.txt",
            "task/wd/sub/c.txt",
            "task/wd/sub/deep/d.txt",
            "task/wd/abc*",
            "task/stdout.txt",
            "other/x.txt",
        ] {
            let p = d.path().join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, f).unwrap();
        }
        std::os::unix::fs::symlink("/etc", d.path().join("task/wd/etc")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", d.path().join("task/wd/passwd.txt")).unwrap();
        d
    }

    fn blobs(d: &Path, pattern: &str, path: &str) -> Vec<String> {
        let me = RunAs { uid: 0, gid: 0, groups: vec![], admin: true };
        find(d, &d.join("task/wd"), pattern, path, &me).unwrap().into_iter().map(|m| m.blob).collect()
    }

    #[test]
    fn wildcards_follow_batch_rules() {
        let d = tree();
        let d = d.path();
        assert_eq!(blobs(d, "*.txt", ""), ["a.txt"], "no dot-files, no subdirectories, no links");
        assert_eq!(blobs(d, "**/*.txt", "out"), ["out/a.txt", "out/sub/c.txt", "out/sub/deep/d.txt"]);
        assert_eq!(blobs(d, ".*.txt", ""), [".hidden.txt"]);
        assert_eq!(blobs(d, "sub/**/*.txt", ""), ["c.txt", "deep/d.txt"]);
        assert_eq!(blobs(d, "[ab].*", ""), ["a.txt", "b.log"]);
        assert_eq!(blobs(d, "[!a]*", ""), ["b.log"]);
        assert_eq!(blobs(d, "?.log", ""), ["b.log"]);
        assert_eq!(blobs(d, "abc[*]", ""), ["abc*"]);
    }

    #[test]
    fn a_named_file_goes_to_path_and_may_be_the_task_dirs() {
        let d = tree();
        let d = d.path();
        assert_eq!(blobs(d, "../stdout.txt", "logs/out.txt"), ["logs/out.txt"]);
        assert_eq!(blobs(d, "../stdout.txt", ""), ["stdout.txt"]);
        assert_eq!(blobs(d, "missing.txt", ""), Vec::<String>::new());
        assert_eq!(blobs(d, "passwd.txt", ""), Vec::<String>::new(), "a link is no file");
        let abs = format!("{}/other/x.txt", d.display());
        assert_eq!(blobs(d, &abs, ""), ["x.txt"]);
        let me = RunAs { uid: 0, gid: 0, groups: vec![], admin: true };
        let e = find(d, &d.join("task/wd"), "/etc/passwd", "", &me).unwrap_err();
        assert!(e.contains("outside the node root"), "{e}");
        assert!(find(d, &d.join("task/wd"), "../../../../../../../../x", "", &me).is_err());
    }

    #[test]
    fn variables_are_expanded() {
        let env =
            BTreeMap::from([("AZ_BATCH_TASK_DIR".to_owned(), "/r/t".to_owned()), ("X".to_owned(), "y".to_owned())]);
        assert_eq!(expand("$AZ_BATCH_TASK_DIR/stdout.txt", &env), "/r/t/stdout.txt");
        assert_eq!(expand("${X}z-$X.$UNSET-$", &env), "yz-y.-$");
    }

    #[test]
    fn walks_stop_where_the_user_could_not_list() {
        let d = tree();
        let dp = d.path();
        std::fs::set_permissions(dp.join("task/wd/sub"), std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
        let other = RunAs { uid: 4242, gid: 4242, groups: vec![], admin: false };
        let got = find(dp, &dp.join("task/wd"), "**/*.txt", "", &other).unwrap();
        assert_eq!(got.iter().map(|m| m.blob.as_str()).collect::<Vec<_>>(), ["a.txt"]);
    }
}
