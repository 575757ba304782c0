//! How a finished process becomes a task result: exit code, and the failure
//! code the scheduler sees (SEMANTICS.md, "Lifecycle and results").

use crate::model::{FailureCode, FailureInfo};

/// Why the agent stopped a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    Terminated,
    WallClock,
}

impl StopReason {
    pub fn failure(self, detail: &str) -> FailureInfo {
        match self {
            StopReason::Terminated => {
                FailureInfo::new(FailureCode::TaskTerminated, format!("the task was terminated{detail}"))
            }
            StopReason::WallClock => FailureInfo::new(
                FailureCode::MaxWallClockTimeExpiry,
                format!("the task ran past its max_wall_clock_time and was stopped{detail}"),
            ),
        }
    }
}

/// containerd reports a process killed by signal N as exit status 128+N (as a
/// shell does), so an exit code in 129..=192 is taken as death by that signal.
/// A process that itself calls `exit(137)` is reported the same way.
pub(super) fn signal_of(code: i32) -> Option<i32> {
    (129..=128 + 64).contains(&code).then_some(code - 128)
}

pub(super) fn signal_name(sig: i32) -> String {
    nix::sys::signal::Signal::try_from(sig).map(|s| s.as_str().to_owned()).unwrap_or_else(|_| format!("signal {sig}"))
}

/// The exit code and failure of a process that exited with `code`; `oom` when
/// the OOM killer killed a process of the task's cgroup.
pub(super) fn completion(code: u32, stop: Option<StopReason>, oom: bool) -> (i32, Option<FailureInfo>) {
    let code = code as i32;
    let failure = match (stop, signal_of(code)) {
        (Some(r), _) => Some(r.failure(&format!(" (exit code {code})"))),
        (None, _) if code == 0 => None,
        (None, _) if oom => Some(FailureInfo::new(
            FailureCode::OOMKilled,
            format!("the task ran out of memory: the OOM killer killed it or one of its processes; exit code {code}"),
        )),
        (None, Some(sig)) => Some(FailureInfo::new(
            FailureCode::TaskKilledBySignal,
            format!("the task was killed by {} ({sig}); exit code {code}", signal_name(sig)),
        )),
        (None, None) => {
            Some(FailureInfo::new(FailureCode::FailureExitCode, format!("the task exited with code {code}")))
        }
    };
    (code, failure)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes() {
        let cases: &[(u32, Option<StopReason>, i32, Option<&str>)] = &[
            (0, None, 0, None),
            (3, None, 3, Some("FailureExitCode")),
            (137, None, 137, Some("TaskKilledBySignal")),
            (143, None, 143, Some("TaskKilledBySignal")),
            (128, None, 128, Some("FailureExitCode")),
            (255, None, 255, Some("FailureExitCode")),
            (143, Some(StopReason::Terminated), 143, Some("TaskTerminated")),
            (0, Some(StopReason::WallClock), 0, Some("MaxWallClockTimeExpiry")),
        ];
        for (code, stop, want_code, want_failure) in cases {
            let (c, f) = completion(*code, *stop, false);
            assert_eq!(c, *want_code);
            assert_eq!(f.map(|f| f.code.as_str()), *want_failure, "{code} {stop:?}");
        }
        assert!(completion(137, None, false).1.unwrap().message.contains("SIGKILL (9)"));
        assert_eq!(completion(137, None, true).1.unwrap().code, "OOMKilled");
        assert_eq!(completion(1, None, true).1.unwrap().code, "OOMKilled", "a child was killed, the task failed");
        assert_eq!(completion(0, None, true).1, None, "a task that survived its child's OOM kill succeeded");
        assert_eq!(completion(137, Some(StopReason::Terminated), true).1.unwrap().code, "TaskTerminated");
    }
}
