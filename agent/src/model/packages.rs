//! Application packages (Batch's `applicationPackageReferences`): an
//! archive at a URL, unpacked once per node into
//! `applications/<id>/<version>/` and announced to the tasks that reference
//! it as `AZ_BATCH_APP_PACKAGE_<id>_<version>`.

use super::SecretUrl;
use serde::{Deserialize, Serialize};

/// Packages per task (and at node level), at most: Batch's limit.
pub const MAX_APP_PACKAGES: usize = 10;

/// An application package's id and version, checked.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PackageId {
    pub application_id: String,
    pub version: String,
}

impl PackageId {
    /// Batch's rules: an id of 1-64 letters, digits, `-` and `_`; a version
    /// of 1-64 letters, digits, `-`, `_` and `.` (required here: the
    /// scheduler resolves a default version).
    pub fn new(application_id: &str, version: &str) -> Result<Self, String> {
        let ok = |s: &str, extra: &[char]| {
            (1..=64).contains(&s.len()) && s.chars().all(|c| c.is_ascii_alphanumeric() || extra.contains(&c))
        };
        if !ok(application_id, &['-', '_']) {
            return Err(format!(
                "application_id {:?} must be 1-64 letters, digits, '-' and '_'",
                application_id.escape_default().to_string()
            ));
        }
        if !ok(version, &['-', '_', '.']) || version == "." || version == ".." {
            return Err(format!(
                "version {:?} must be 1-64 letters, digits, '-', '_' and '.' (the scheduler resolves a default version)",
                version.escape_default().to_string()
            ));
        }
        Ok(Self { application_id: application_id.into(), version: version.into() })
    }

    /// The variables it is announced as. Batch's Linux rule flattens `.`,
    /// `-` and `#` to `_`; its documentation shows the id both as given
    /// (`AZ_BATCH_APP_PACKAGE_FOO_1`) and lower-cased
    /// (`AZ_BATCH_APP_PACKAGE_agent_linux_x64_1_1_46_0`), so both are set
    /// when they differ.
    pub fn env_names(&self) -> Vec<String> {
        let flat = |s: &str| s.chars().map(|c| if matches!(c, '.' | '-' | '#') { '_' } else { c }).collect::<String>();
        let given = format!("AZ_BATCH_APP_PACKAGE_{}_{}", flat(&self.application_id), flat(&self.version));
        let lower =
            format!("AZ_BATCH_APP_PACKAGE_{}_{}", flat(&self.application_id.to_ascii_lowercase()), flat(&self.version));
        if lower == given {
            vec![given]
        } else {
            vec![given, lower]
        }
    }
}

impl PackageId {
    /// Its directory below `applications/`: `<id>/<version>`.
    pub fn rel_dir(&self) -> std::path::PathBuf {
        std::path::Path::new(&self.application_id).join(&self.version)
    }
}

impl std::fmt::Display for PackageId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.application_id, self.version)
    }
}

/// A reference to a package: which, and where its archive is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppPackage {
    pub id: PackageId,
    pub url: SecretUrl,
}

/// Checks a list of references: at most [`MAX_APP_PACKAGES`], no package
/// twice, no two whose variables would collide.
pub fn check_packages(packages: &[AppPackage]) -> Result<(), String> {
    if packages.len() > MAX_APP_PACKAGES {
        return Err(format!("has {} entries; at most {MAX_APP_PACKAGES}", packages.len()));
    }
    let mut names = std::collections::BTreeMap::new();
    for (i, p) in packages.iter().enumerate() {
        for name in p.id.env_names() {
            if let Some(other) = names.insert(name.clone(), &p.id) {
                return Err(format!("[{i}]: {} and {other} are both announced as {name}", p.id));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_linux_variable_names() {
        let id = PackageId::new("Agent-linux-x64", "1.1.46.0").unwrap();
        assert_eq!(
            id.env_names(),
            ["AZ_BATCH_APP_PACKAGE_Agent_linux_x64_1_1_46_0", "AZ_BATCH_APP_PACKAGE_agent_linux_x64_1_1_46_0"]
        );
        assert_eq!(PackageId::new("foo", "1").unwrap().env_names(), ["AZ_BATCH_APP_PACKAGE_foo_1"]);
    }

    #[test]
    fn ids_and_versions_follow_batch_rules() {
        assert!(PackageId::new("a_b-c", "2.0-rc_1").is_ok());
        for (id, v) in [("", "1"), ("a/b", "1"), ("a.b", "1"), ("a", ""), ("a", ".."), ("a", "1/2"), ("a", "1 2")] {
            assert!(PackageId::new(id, v).is_err(), "{id:?} {v:?}");
        }
        assert!(PackageId::new(&"x".repeat(65), "1").is_err());
    }

    #[test]
    fn colliding_and_repeated_references_are_refused() {
        let p = |id: &str, v: &str| AppPackage {
            id: PackageId::new(id, v).unwrap(),
            url: SecretUrl::parse("http://127.0.0.1/p.zip").unwrap(),
        };
        assert!(check_packages(&[p("a", "1"), p("a", "2"), p("b", "1")]).is_ok());
        assert!(check_packages(&[p("a", "1"), p("a", "1")]).unwrap_err().contains("AZ_BATCH_APP_PACKAGE_a_1"));
        assert!(check_packages(&[p("a-b", "1"), p("a_b", "1")]).is_err());
        assert!(check_packages(&[p("A", "1"), p("a", "1")]).is_err());
        let many: Vec<_> = (0..11).map(|i| p("a", &i.to_string())).collect();
        assert!(check_packages(&many).is_err());
    }
}
