//! Where a task's time goes from its acceptance to RUNNING, step by step:
//! logged with "task running" (`phases`), so that a slow start can be taken
//! apart (issue 23: the latency tail; `scripts/bench` reports it).

use std::fmt;
use std::time::{Duration, Instant, SystemTime};

/// Named durations, each from the previous mark.
#[derive(Debug)]
pub(super) struct Phases {
    last: Instant,
    marks: Vec<(&'static str, Duration)>,
}

impl Phases {
    /// Starts now, with the time the task waited since `accepted` (the
    /// queue and the runner's start) as the first phase, `queued`.
    pub(super) fn since(accepted: SystemTime) -> Self {
        let queued = SystemTime::now().duration_since(accepted).unwrap_or_default();
        Self { last: Instant::now(), marks: vec![("queued", queued)] }
    }

    /// Ends the phase `name` now.
    pub(super) fn mark(&mut self, name: &'static str) {
        let now = Instant::now();
        self.marks.push((name, now - self.last));
        self.last = now;
    }

    #[cfg(test)]
    fn names(&self) -> Vec<&'static str> {
        self.marks.iter().map(|m| m.0).collect()
    }
}

/// `queued=0.41 dirs=0.12 …`, in milliseconds.
impl fmt::Display for Phases {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (name, d)) in self.marks.iter().enumerate() {
            let sep = if i == 0 { "" } else { " " };
            write!(f, "{sep}{name}={:.2}", d.as_secs_f64() * 1000.0)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_phase_runs_from_the_previous_mark() {
        let mut p = Phases::since(SystemTime::now() - Duration::from_millis(30));
        std::thread::sleep(Duration::from_millis(5));
        p.mark("dirs");
        p.mark("image");
        assert_eq!(p.names(), ["queued", "dirs", "image"]);
        assert!(p.marks[0].1 >= Duration::from_millis(30));
        assert!(p.marks[1].1 >= Duration::from_millis(5));
        assert!(p.marks[2].1 < p.marks[1].1);
        let shown = p.to_string();
        assert!(shown.starts_with("queued=3") && shown.contains(" dirs=") && shown.contains(" image="), "{shown}");
    }
}
