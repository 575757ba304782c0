//! Image facts the agent needs, independent of where they come from: reference
//! normalisation (`busybox` → `docker.io/library/busybox:latest`), the parts of
//! an image config that shape a container, platform selection in an index, and
//! the chain ID under which an image's unpacked layers live in a snapshotter.

use oci_spec::distribution::Reference;
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    #[error("image reference is empty")]
    Empty,
    #[error("image reference {reference:?} is not valid: {reason}")]
    BadReference { reference: String, reason: String },
}

/// Normalises an image reference the way `docker pull` does: default registry
/// `docker.io`, `library/` for single-name Docker Hub images, tag `latest` when
/// neither tag nor digest is given.
pub fn normalize(reference: &str) -> Result<String, ImageError> {
    let trimmed = reference.trim();
    if trimmed.is_empty() {
        return Err(ImageError::Empty);
    }
    let parsed = Reference::try_from(trimmed)
        .map_err(|e| ImageError::BadReference { reference: reference.to_owned(), reason: e.to_string() })?;
    // The parser accepts an upper-case first component as a registry name even
    // when it is not one ("UPPER/img"); docker refuses such a repository.
    if parsed.repository().bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(ImageError::BadReference {
            reference: reference.to_owned(),
            reason: "repository name must be lowercase".into(),
        });
    }
    Ok(parsed.whole())
}

/// What of an image's config shapes a container (OCI image spec, `config` object).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// `KEY=value` entries, in image order.
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
}

impl From<&oci_spec::image::ImageConfiguration> for ImageConfig {
    fn from(c: &oci_spec::image::ImageConfiguration) -> Self {
        let Some(cfg) = c.config() else {
            return Self::default();
        };
        Self {
            entrypoint: cfg.entrypoint().clone().unwrap_or_default(),
            cmd: cfg.cmd().clone().unwrap_or_default(),
            env: cfg.env().clone().unwrap_or_default(),
            working_dir: cfg.working_dir().clone().filter(|w| !w.is_empty()),
            user: cfg.user().clone().filter(|u| !u.is_empty()),
        }
    }
}

/// The node's platform in OCI terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    /// The platform this agent was built for (Go's GOOS/GOARCH names, as images use).
    pub fn host() -> Self {
        let (architecture, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "aarch64" => ("arm64", Some("v8")),
            "x86" => ("386", None),
            "arm" => ("arm", Some("v7")),
            "powerpc64" => ("ppc64le", None),
            "s390x" => ("s390x", None),
            "riscv64" => ("riscv64", None),
            other => (other, None),
        };
        Self { os: std::env::consts::OS.into(), architecture: architecture.into(), variant: variant.map(Into::into) }
    }

    /// Whether an index entry's platform runs here. An entry without a variant
    /// matches any variant; for arm64 the variant "v8" is the default.
    pub fn matches(&self, os: &str, architecture: &str, variant: Option<&str>) -> bool {
        if os != self.os || architecture != self.architecture {
            return false;
        }
        match (variant, self.variant.as_deref()) {
            (None, _) | (Some(""), _) => true,
            (Some(v), Some(mine)) => v == mine,
            (Some(_), None) => false,
        }
    }

    pub fn describe(&self) -> String {
        match &self.variant {
            Some(v) => format!("{}/{}/{}", self.os, self.architecture, v),
            None => format!("{}/{}", self.os, self.architecture),
        }
    }
}

/// The chain ID of a layer stack (OCI image spec, "Layer ChainID"): the key of
/// the committed snapshot holding the stack unpacked.
/// `ChainID(L0) = DiffID(L0)`, `ChainID(L0..n) = sha256(ChainID(L0..n-1) + " " + DiffID(Ln))`.
pub fn chain_id(diff_ids: &[String]) -> Option<String> {
    let mut iter = diff_ids.iter();
    let mut chain = iter.next()?.clone();
    for diff in iter {
        let digest = Sha256::digest(format!("{chain} {diff}").as_bytes());
        chain = format!("sha256:{}", hex::encode(digest));
    }
    Some(chain)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_like_docker() {
        let cases = [
            ("busybox", "docker.io/library/busybox:latest"),
            ("busybox:1.36", "docker.io/library/busybox:1.36"),
            ("user/img", "docker.io/user/img:latest"),
            ("ghcr.io/o/img:v1", "ghcr.io/o/img:v1"),
            ("127.0.0.1:5000/t/busybox", "127.0.0.1:5000/t/busybox:latest"),
            ("localhost/img", "localhost/img:latest"),
            (
                "busybox@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
                "docker.io/library/busybox@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(normalize(input).unwrap(), want, "{input}");
        }
    }

    #[test]
    fn refuses_bad_references() {
        assert_eq!(normalize("  "), Err(ImageError::Empty));
        for bad in ["Busybox", "UPPER/case", "a b", "img@sha256:12", "img:", "::"] {
            assert!(matches!(normalize(bad), Err(ImageError::BadReference { .. })), "{bad}");
        }
    }

    #[test]
    fn chain_ids() {
        let a = "sha256:aaaa".to_string();
        let b = "sha256:bbbb".to_string();
        assert_eq!(chain_id(&[]), None);
        assert_eq!(chain_id(std::slice::from_ref(&a)), Some(a.clone()));
        let want = format!("sha256:{}", hex::encode(Sha256::digest(b"sha256:aaaa sha256:bbbb")));
        assert_eq!(chain_id(&[a, b]), Some(want));
    }

    #[test]
    fn platform_matching() {
        let amd = Platform { os: "linux".into(), architecture: "amd64".into(), variant: None };
        assert!(amd.matches("linux", "amd64", None));
        assert!(!amd.matches("linux", "arm64", None));
        assert!(!amd.matches("windows", "amd64", None));
        let arm = Platform { os: "linux".into(), architecture: "arm64".into(), variant: Some("v8".into()) };
        assert!(arm.matches("linux", "arm64", Some("v8")));
        assert!(arm.matches("linux", "arm64", None));
        assert!(!arm.matches("linux", "arm64", Some("v9")));
    }
}
