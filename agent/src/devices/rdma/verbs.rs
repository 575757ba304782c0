//! The HCAs sysfs listed, refined by what libibverbs reports (`sys::verbs`).

use super::{Hca, Port};

/// Replaces the ports of each HCA in `hcas` that libibverbs also knows by what
/// it reports. HCAs it does not know (fixture trees, no provider) are left as
/// sysfs described them.
pub(super) fn refine(hcas: &mut [Hca]) {
    let names: Vec<&str> = hcas.iter().map(|h| h.name.as_str()).collect();
    let found = crate::sys::verbs::ports(&names);
    for (name, ports) in found {
        if let Some(hca) = hcas.iter_mut().find(|h| h.name == name) {
            hca.ports = ports
                .into_iter()
                .map(|p| Port { port: p.port, state: p.state.into(), link_layer: p.link_layer.into() })
                .collect();
        }
    }
}
