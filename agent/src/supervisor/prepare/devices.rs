//! The task's CDI devices, resolved against the node's registry as it is now
//! (CDI specs are regenerated, e.g. at boot, after `RunTask` checked the
//! request): those shared as they are, plus the GPUs it asked for
//! exclusively, waited for while other tasks hold them (see `gpus`).

use super::{Failure, Task};
use crate::devices::Registry;
use crate::model::TaskSpec;
use crate::spec::RunOptions;
use crate::supervisor::admission::{devices_for, DeviceRequest};
use crate::supervisor::Supervisor;

fn resolve(sup: &Supervisor, t: &Task<'_>) -> Result<DeviceRequest, Failure> {
    resolve_with(&t.info.spec, &t.checked.run_options, sup.shared.settings.devices.as_deref())
}

/// What the task gets from `registry` now; any refusal is a
/// `DeviceInjectionFailed` (the host changed since `RunTask`).
fn resolve_with(spec: &TaskSpec, o: &RunOptions, registry: Option<&Registry>) -> Result<DeviceRequest, Failure> {
    devices_for(spec, o, registry).map_err(|e| Failure::Devices(e.to_string()))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{FailureCode, FailureInfo};

    fn spec(devices: &[&str]) -> TaskSpec {
        let mut s = crate::supervisor::admission::tests::spec(Some("busybox"), "");
        s.container.as_mut().unwrap().devices = devices.iter().map(|d| d.to_string()).collect();
        s
    }

    #[test]
    fn no_registry_and_no_devices_is_nothing() {
        let r = resolve_with(&spec(&[]), &RunOptions::default(), None).unwrap();
        assert_eq!(r, DeviceRequest::default());
    }

    /// A device that was there at RunTask and is gone now fails the task as
    /// `DeviceInjectionFailed`, whatever admission would have called it.
    #[test]
    fn a_device_gone_since_admission_is_a_device_injection_failure() {
        let Err(f) = resolve_with(&spec(&["vendor.com/x=0"]), &RunOptions::default(), None) else {
            panic!("a device without a registry was granted")
        };
        let info = FailureInfo::from(f);
        assert_eq!(info.code, FailureCode::DeviceInjectionFailed, "{info:?}");
        assert!(info.message.contains("no CDI devices"), "{info:?}");
    }
}
