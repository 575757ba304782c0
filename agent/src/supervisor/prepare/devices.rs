//! The task's CDI devices, resolved against the node's registry as it is now
//! (CDI specs are regenerated, e.g. at boot, after `RunTask` checked the
//! request): those shared as they are, plus the GPUs it asked for
//! exclusively, waited for while other tasks hold them (see `gpus`).

use super::{Failure, Task};
use crate::supervisor::admission::{devices_for, DeviceRequest};
use crate::supervisor::Supervisor;

/// What the task gets from the registry now; any refusal is a
/// `DeviceInjectionFailed` (the host changed since `RunTask`).
fn resolve(sup: &Supervisor, t: &Task<'_>) -> Result<DeviceRequest, Failure> {
    let registry = sup.shared.settings.devices.as_deref();
    devices_for(&t.info.spec, &t.checked.run_options, registry).map_err(|e| Failure::Devices(e.to_string()))
}

pub(super) async fn hold(sup: &Supervisor, t: &mut Task<'_>) -> Result<Vec<String>, Failure> {
    let request = resolve(sup, t)?;
    let mut names = request.shared;
    let Some(want) = request.exclusive else { return Ok(names) };
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
