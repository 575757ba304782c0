//! Why a task failed: one code per cause, each with its category, defined here
//! and nowhere else. The wire strings are what scheduler scripts match on: they
//! never change once released (a test lists them all, and checks the README's
//! table against them).

use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FailureCategory {
    UserError,
    ServerError,
}

macro_rules! failure_codes {
    ($($code:ident => $category:ident,)+) => {
        /// A task's `failure_info.code`.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum FailureCode {
            $($code,)+
        }

        impl FailureCode {
            /// Every code, in the order of the README's table.
            pub const ALL: &'static [FailureCode] = &[$(FailureCode::$code,)+];

            /// The wire string.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(FailureCode::$code => stringify!($code),)+
                }
            }

            /// Whether the task's owner (user) or the node (server) is to blame.
            pub const fn category(self) -> FailureCategory {
                match self {
                    $(FailureCode::$code => FailureCategory::$category,)+
                }
            }
        }
    };
}

failure_codes! {
    FailureExitCode => UserError,
    TaskKilledBySignal => UserError,
    TaskTerminated => UserError,
    MaxWallClockTimeExpiry => UserError,
    UserIdentityInvalid => UserError,
    ImageReferenceInvalid => UserError,
    ImageNotFound => UserError,
    ImagePullFailed => UserError,
    ImagePlatformMismatch => UserError,
    ImageInvalid => UserError,
    ImageStoreFailed => ServerError,
    OOMKilled => UserError,
    ImageUserNotFound => UserError,
    RunOptionInvalid => UserError,
    DeviceInjectionFailed => UserError,
    ContainerCreateFailed => UserError,
    ContainerStartFailed => UserError,
    ContainerdUnavailable => ServerError,
    DiskFull => ServerError,
    TaskDirectoryCreateFailed => ServerError,
    UnsafeTaskFile => UserError,
    StateDatabaseFailed => ServerError,
    ContainerLost => ServerError,
    TaskRecordLost => ServerError,
    TaskSlotsUnavailable => UserError,
    JobPreparationFailed => UserError,
    StartTaskFailed => ServerError,
    HostProcessStartFailed => UserError,
    HostShimFailed => ServerError,
    CommandLineInvalid => UserError,
    HostProcessLost => ServerError,
    AgentInternalError => ServerError,
    ResourceFileDownloadFailed => UserError,
    FileUploadFailed => UserError,
    ApplicationPackageFailed => UserError,
    NetworkSetupFailed => UserError,
    // Recorded by agents before host tasks existed; kept so their records read back.
    HostTaskNotSupported => UserError,
}

impl FailureCode {
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|c| c.as_str() == s)
    }

    /// Codes whose blame follows the cause: a transfer refused (4xx, a bad
    /// URL) is the task's, a server or network failure the node's. Their
    /// `category()` is the task's; [`FailureInfo::on_the_node`] makes the other.
    /// A network set-up failure is the task's when it asked for a host port
    /// another task holds, the node's otherwise.
    pub const fn either_side(self) -> bool {
        matches!(
            self,
            FailureCode::ResourceFileDownloadFailed
                | FailureCode::ContainerCreateFailed
                | FailureCode::FileUploadFailed
                | FailureCode::ApplicationPackageFailed
                | FailureCode::NetworkSetupFailed
        )
    }
}

impl fmt::Display for FailureCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<str> for FailureCode {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for FailureCode {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl Serialize for FailureCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for FailureCode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        FailureCode::parse(&s).ok_or_else(|| serde::de::Error::custom(format!("unknown failure code {s:?}")))
    }
}

/// A task's `failure_info`: the category always follows the code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "StoredFailure")]
pub struct FailureInfo {
    pub category: FailureCategory,
    pub code: FailureCode,
    pub message: String,
}

/// A `failure_info` as stored: a code this agent does not know (a record
/// written by a newer agent) must not make the whole state database
/// unreadable, so it reads back as `AgentInternalError` naming the code.
#[derive(Deserialize)]
struct StoredFailure {
    category: FailureCategory,
    code: String,
    message: String,
}

impl From<StoredFailure> for FailureInfo {
    fn from(s: StoredFailure) -> Self {
        match FailureCode::parse(&s.code) {
            Some(code) => FailureInfo { category: s.category, code, message: s.message },
            None => FailureInfo::new(
                FailureCode::AgentInternalError,
                format!("recorded with failure code {:?}, which this agent does not know: {}", s.code, s.message),
            ),
        }
    }
}

impl FailureInfo {
    pub fn new(code: FailureCode, message: impl Into<String>) -> Self {
        Self { category: code.category(), code, message: message.into() }
    }

    /// A failure of a code that is the task's or the node's, the node's
    /// (a code that is always one or the other keeps its own category).
    pub fn on_the_node(code: FailureCode, message: impl Into<String>) -> Self {
        let category = if code.either_side() { FailureCategory::ServerError } else { code.category() };
        Self { category, code, message: message.into() }
    }
}

#[cfg(test)]
mod tests {
    use super::FailureCategory::{ServerError as S, UserError as U};
    use super::*;

    /// Every code with its wire string and category. A change here is a change
    /// of the scheduler API: existing strings never change.
    const TABLE: &[(FailureCode, &str, FailureCategory)] = &[
        (FailureCode::FailureExitCode, "FailureExitCode", U),
        (FailureCode::TaskKilledBySignal, "TaskKilledBySignal", U),
        (FailureCode::TaskTerminated, "TaskTerminated", U),
        (FailureCode::MaxWallClockTimeExpiry, "MaxWallClockTimeExpiry", U),
        (FailureCode::UserIdentityInvalid, "UserIdentityInvalid", U),
        (FailureCode::ImageReferenceInvalid, "ImageReferenceInvalid", U),
        (FailureCode::ImageNotFound, "ImageNotFound", U),
        (FailureCode::ImagePullFailed, "ImagePullFailed", U),
        (FailureCode::ImagePlatformMismatch, "ImagePlatformMismatch", U),
        (FailureCode::ImageInvalid, "ImageInvalid", U),
        (FailureCode::ImageStoreFailed, "ImageStoreFailed", S),
        (FailureCode::OOMKilled, "OOMKilled", U),
        (FailureCode::ImageUserNotFound, "ImageUserNotFound", U),
        (FailureCode::RunOptionInvalid, "RunOptionInvalid", U),
        (FailureCode::DeviceInjectionFailed, "DeviceInjectionFailed", U),
        (FailureCode::ContainerCreateFailed, "ContainerCreateFailed", U),
        (FailureCode::ContainerStartFailed, "ContainerStartFailed", U),
        (FailureCode::ContainerdUnavailable, "ContainerdUnavailable", S),
        (FailureCode::DiskFull, "DiskFull", S),
        (FailureCode::TaskDirectoryCreateFailed, "TaskDirectoryCreateFailed", S),
        (FailureCode::UnsafeTaskFile, "UnsafeTaskFile", U),
        (FailureCode::StateDatabaseFailed, "StateDatabaseFailed", S),
        (FailureCode::ContainerLost, "ContainerLost", S),
        (FailureCode::TaskRecordLost, "TaskRecordLost", S),
        (FailureCode::TaskSlotsUnavailable, "TaskSlotsUnavailable", U),
        (FailureCode::JobPreparationFailed, "JobPreparationFailed", U),
        (FailureCode::StartTaskFailed, "StartTaskFailed", S),
        (FailureCode::HostProcessStartFailed, "HostProcessStartFailed", U),
        (FailureCode::HostShimFailed, "HostShimFailed", S),
        (FailureCode::CommandLineInvalid, "CommandLineInvalid", U),
        (FailureCode::HostProcessLost, "HostProcessLost", S),
        (FailureCode::AgentInternalError, "AgentInternalError", S),
        (FailureCode::ResourceFileDownloadFailed, "ResourceFileDownloadFailed", U),
        (FailureCode::FileUploadFailed, "FileUploadFailed", U),
        (FailureCode::ApplicationPackageFailed, "ApplicationPackageFailed", U),
        (FailureCode::NetworkSetupFailed, "NetworkSetupFailed", U),
        (FailureCode::HostTaskNotSupported, "HostTaskNotSupported", U),
    ];

    #[test]
    fn every_code_has_its_wire_string_and_category() {
        assert_eq!(FailureCode::ALL.len(), TABLE.len(), "a code was added: add it to TABLE (and the README)");
        for (code, wire, category) in TABLE {
            assert_eq!((code.as_str(), code.category()), (*wire, *category));
            assert_eq!(FailureCode::parse(wire), Some(*code));
            let info = FailureInfo::new(*code, "m");
            assert_eq!(info.category, *category);
            let json = serde_json::to_string(&info).unwrap();
            assert!(json.contains(&format!("\"code\":\"{wire}\"")), "{json}");
            assert_eq!(serde_json::from_str::<FailureInfo>(&json).unwrap(), info);
        }
        assert_eq!(FailureCode::parse("NoSuchCode"), None);
    }

    #[test]
    fn only_transfer_network_and_create_codes_can_be_the_nodes_or_the_tasks() {
        let either: Vec<_> = FailureCode::ALL.iter().filter(|c| c.either_side()).collect();
        assert_eq!(
            either,
            [
                &FailureCode::ContainerCreateFailed,
                &FailureCode::ResourceFileDownloadFailed,
                &FailureCode::FileUploadFailed,
                &FailureCode::ApplicationPackageFailed,
                &FailureCode::NetworkSetupFailed
            ]
        );
        let node = FailureInfo::on_the_node(FailureCode::FileUploadFailed, "HTTP 503");
        assert_eq!(node.category, S);
        assert_eq!(FailureInfo::new(FailureCode::FileUploadFailed, "HTTP 403").category, U);
        // A code that is always the task's stays so.
        assert_eq!(FailureInfo::on_the_node(FailureCode::ImageNotFound, "m").category, U);
    }

    /// A record with a code this agent does not know still reads back.
    #[test]
    fn an_unknown_stored_code_reads_back() {
        let json = r#"{"category":"UserError","code":"FromTheFuture","message":"m"}"#;
        let info: FailureInfo = serde_json::from_str(json).unwrap();
        assert_eq!((info.code, info.category), (FailureCode::AgentInternalError, FailureCategory::ServerError));
        assert!(info.message.contains("FromTheFuture") && info.message.ends_with(": m"), "{}", info.message);
        let old = r#"{"category":"UserError","code":"HostTaskNotSupported","message":"no container"}"#;
        let info: FailureInfo = serde_json::from_str(old).unwrap();
        assert_eq!(info.code, FailureCode::HostTaskNotSupported);
    }

    /// The README's failure-code table lists exactly these codes, each with
    /// its category.
    #[test]
    fn readme_table_matches() {
        let readme = include_str!("../../../README.md");
        let mut rows = Vec::new();
        for line in readme.lines().filter(|l| l.starts_with("| `")) {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let (codes, category) = (cells[1], cells[2]);
            let category = match category {
                "user" => U,
                "server" => S,
                // Either side: the table test checks `either_side` too.
                "user or server" => U,
                _ => continue,
            };
            let either = cells[2] == "user or server";
            for code in codes.split(", ") {
                let Some(code) = code.strip_prefix('`').and_then(|c| c.strip_suffix('`')) else { continue };
                if let Some(c) = FailureCode::parse(code) {
                    assert_eq!(c.either_side(), either, "{code}: the README's category says {:?}", cells[2]);
                    rows.push((c, category));
                } else if code.chars().next().is_some_and(|c| c.is_ascii_uppercase()) {
                    panic!("the README's table names {code}, which is no failure code");
                }
            }
        }
        for (code, _, category) in TABLE {
            let found: Vec<_> = rows.iter().filter(|(c, _)| c == code).collect();
            assert_eq!(found.len(), 1, "{code} must be in the README's table exactly once");
            assert_eq!(found[0].1, *category, "{code}'s category in the README");
        }
    }
}
