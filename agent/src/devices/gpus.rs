//! Which GPUs a task gets. `--gpus` as nerdctl maps it to CDI names: `all`,
//! a count `N` (the first N GPUs), or `device=ID[,ID]` (by the CDI device name
//! or index within the class). Without `--gpus` or explicit GPU devices a task
//! gets every GPU of the node when `inject_all_gpus` is on.

/// `--gpus` as parsed from run options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GpuRequest {
    All,
    Count(usize),
    Ids(Vec<String>),
}

/// Parses a `--gpus` value (`all`, `2`, `device=0,1`, `"device=0,1"`, `count=2`).
pub fn parse(text: &str) -> Result<GpuRequest, String> {
    let t = text.trim().trim_matches('"');
    if t == "all" || t == "count=all" {
        return Ok(GpuRequest::All);
    }
    let n = t.strip_prefix("count=").unwrap_or(t);
    if let Ok(n) = n.parse::<usize>() {
        return if n == 0 { Err("0 GPUs: leave --gpus out".into()) } else { Ok(GpuRequest::Count(n)) };
    }
    if let Some(ids) = t.strip_prefix("device=") {
        let ids: Vec<String> = ids.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect();
        if ids.is_empty() || ids.iter().any(|i| !i.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))) {
            return Err(format!("{text:?}: device= needs GPU ids or indexes, e.g. device=0,1"));
        }
        return Ok(GpuRequest::Ids(ids));
    }
    Err(format!("{text:?} is not all, a count, or device=ID[,ID] (capabilities and drivers are not supported)"))
}

/// The GPU device names among `names`: devices of `classes`, not their `all` alias.
pub fn of(names: &[String], classes: &[String]) -> Vec<String> {
    names
        .iter()
        .filter(|n| n.split_once('=').is_some_and(|(kind, dev)| classes.iter().any(|c| c == kind) && dev != "all"))
        .cloned()
        .collect()
}

/// The device names a `--gpus` request selects on a node with `gpus`.
pub fn select(req: &GpuRequest, gpus: &[String]) -> Result<Vec<String>, String> {
    match req {
        GpuRequest::All if gpus.is_empty() => {
            Err("--gpus all: this node has no GPUs (no CDI spec of a GPU class)".into())
        }
        GpuRequest::All => Ok(gpus.to_vec()),
        GpuRequest::Count(n) if *n > gpus.len() => Err(format!("--gpus {n}: this node has {} GPU(s)", gpus.len())),
        GpuRequest::Count(n) => Ok(gpus[..*n].to_vec()),
        GpuRequest::Ids(ids) => ids
            .iter()
            .map(|id| {
                gpus.iter()
                    .find(|g| g.split_once('=').is_some_and(|(_, dev)| dev == id) || *g == id)
                    .cloned()
                    .ok_or_else(|| format!("--gpus device={id}: no such GPU on this node (it has {})", gpus.join(", ")))
            })
            .collect(),
    }
}
