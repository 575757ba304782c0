//! Port state and link layer from libibverbs (`rdma-sys`): what the verbs
//! library itself sees on real hardware. Only with the `rdma` cargo feature
//! (on by default); `devices::rdma` uses it to refine what sysfs listed.

use rdma_sys::{
    ___ibv_query_port, ibv_close_device, ibv_device_attr, ibv_free_device_list, ibv_get_device_list,
    ibv_get_device_name, ibv_open_device, ibv_port_attr, ibv_port_state, ibv_query_device,
};
use std::ffi::CStr;

/// One port as libibverbs reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerbsPort {
    pub port: u32,
    /// `ACTIVE`, `DOWN`, `INIT`, ...
    pub state: &'static str,
    /// `InfiniBand`, `Ethernet` (RoCE), or empty.
    pub link_layer: &'static str,
}

fn state_name(s: ibv_port_state::Type) -> &'static str {
    match s {
        ibv_port_state::IBV_PORT_DOWN => "DOWN",
        ibv_port_state::IBV_PORT_INIT => "INIT",
        ibv_port_state::IBV_PORT_ARMED => "ARMED",
        ibv_port_state::IBV_PORT_ACTIVE => "ACTIVE",
        ibv_port_state::IBV_PORT_ACTIVE_DEFER => "ACTIVE_DEFER",
        _ => "NOP",
    }
}

/// The ports of each device named in `wanted` that libibverbs knows and
/// could query; devices it does not know (fixture trees, no provider) are
/// not in the answer.
pub fn ports(wanted: &[&str]) -> Vec<(String, Vec<VerbsPort>)> {
    let mut out = Vec::new();
    let mut n = 0;
    // SAFETY: ibv_get_device_list writes the count to `n` and returns a
    // NULL-terminated array (or NULL), freed below with ibv_free_device_list.
    let list = unsafe { ibv_get_device_list(&mut n) };
    if list.is_null() {
        return out;
    }
    for i in 0..usize::try_from(n).unwrap_or(0) {
        // SAFETY: i < n, the array's length.
        let dev = unsafe { *list.add(i) };
        // SAFETY: dev comes from the list; the name is a C string owned by it.
        let name = unsafe { CStr::from_ptr(ibv_get_device_name(dev)) }.to_string_lossy().into_owned();
        if !wanted.contains(&name.as_str()) {
            continue;
        }
        // SAFETY: dev is valid while the list lives; the context is closed below.
        let ctx = unsafe { ibv_open_device(dev) };
        if ctx.is_null() {
            continue;
        }
        // SAFETY: both structs are plain C data for which all-zero is valid.
        let mut attr: ibv_device_attr = unsafe { std::mem::zeroed() };
        // SAFETY: ctx is open; attr is a valid out-pointer.
        if unsafe { ibv_query_device(ctx, &mut attr) } == 0 {
            let mut ports = Vec::new();
            for port in 1..=attr.phys_port_cnt {
                // SAFETY: as above.
                let mut pa: ibv_port_attr = unsafe { std::mem::zeroed() };
                // SAFETY: ctx is open, port is in 1..=phys_port_cnt, pa is a valid out-pointer.
                if unsafe { ___ibv_query_port(ctx, port, &mut pa) } == 0 {
                    let link_layer = match pa.link_layer {
                        1 => "InfiniBand",
                        2 => "Ethernet",
                        _ => "",
                    };
                    ports.push(VerbsPort { port: port.into(), state: state_name(pa.state), link_layer });
                }
            }
            out.push((name, ports));
        }
        // SAFETY: ctx was opened above and is not used after this.
        unsafe { ibv_close_device(ctx) };
    }
    // SAFETY: list came from ibv_get_device_list and is not used after this.
    unsafe { ibv_free_device_list(list) };
    out
}
