//! The task's CDI devices: those shared as they are, plus the GPUs it asked
//! for exclusively, waited for while other tasks hold them (see `gpus`).

use super::{Failure, Task};
use crate::supervisor::Supervisor;

pub(super) async fn hold(sup: &Supervisor, t: &mut Task<'_>) -> Result<Vec<String>, Failure> {
    let mut names = t.checked.devices.shared.clone();
    let Some(want) = t.checked.devices.exclusive.clone() else { return Ok(names) };
    let mut stop = t.stop.clone();
    let key = t.info.key().clone();
    let held = tokio::select! {
        g = sup.hold_gpus(&key, &want) => g,
        stop = crate::supervisor::stop::stopped(&mut stop) => {
            return Err(Failure::Stopped { stop, while_: " while it waited for GPUs" });
        }
    };
    names.extend(held.iter().cloned());
    t.info.held_gpus = held;
    Ok(names)
}
