//! The runtime side of CNI's plugin-exec contract (CNI spec 1.0, "Section 3:
//! Execution of Network Configurations"): a network configuration list is
//! added plugin by plugin, each given the previous one's result, and deleted
//! in reverse order with the final result. Plugins are executables found in
//! `CNI_PATH`, given `CNI_*` variables and the plugin's configuration on
//! stdin; they answer JSON on stdout (an error object with a non-zero exit).
//!
//! No crate does this side well: the Rust CNI crates are for writing plugins
//! (`cni-plugin`, `rscni`), and `rust-cni` is synchronous and unmaintained.

use serde_json::{json, Map, Value};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// How long one plugin may take (iptables under contention is the slow part).
const PLUGIN_TIMEOUT: Duration = Duration::from_secs(60);
/// Most bytes of a plugin's answer read.
const MAX_OUTPUT: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum CniError {
    #[error("CNI plugin {plugin:?} is not in {dir}")]
    Missing { plugin: String, dir: String },
    #[error("CNI plugin {plugin:?} could not be run: {source}")]
    Exec { plugin: String, source: std::io::Error },
    #[error("CNI plugin {plugin:?} took more than {}s and was killed", PLUGIN_TIMEOUT.as_secs())]
    Timeout { plugin: String },
    #[error("CNI plugin {plugin:?} failed ({command}): {message}")]
    Failed { plugin: String, command: &'static str, message: String },
    #[error("CNI network configuration: {0}")]
    Config(String),
}

/// The `CNI_*` variables of one call.
#[derive(Debug, Clone, Copy)]
pub(super) struct Call<'a> {
    pub container_id: &'a str,
    /// Empty when the namespace is gone (DEL after a reboot).
    pub netns: &'a str,
    pub ifname: &'a str,
    pub bin_dir: &'a Path,
}

/// The configuration one plugin of `list` is given: its own object with the
/// list's `name` and `cniVersion`, the previous result, and the runtime
/// config keys its `capabilities` ask for.
pub(super) fn plugin_config(list: &Value, plugin: &Value, prev: Option<&Value>, runtime: &Value) -> Value {
    let mut conf: Map<String, Value> = plugin.as_object().cloned().unwrap_or_default();
    conf.insert("name".into(), list.get("name").cloned().unwrap_or(Value::Null));
    conf.insert("cniVersion".into(), list.get("cniVersion").cloned().unwrap_or(Value::Null));
    if let Some(p) = prev {
        conf.insert("prevResult".into(), p.clone());
    }
    let caps = plugin.get("capabilities").and_then(Value::as_object);
    let wanted: Map<String, Value> = runtime
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, _)| caps.is_some_and(|c| c.get(k.as_str()) == Some(&Value::Bool(true))))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    conf.remove("runtimeConfig");
    if !wanted.is_empty() {
        conf.insert("runtimeConfig".into(), Value::Object(wanted));
    }
    Value::Object(conf)
}

/// Checks the shape of a configuration list: a name, a version, plugins
/// each with a `type` that names a file (no path).
pub(super) fn check_list(list: &Value) -> Result<(), CniError> {
    let bad = |m: &str| Err(CniError::Config(m.to_owned()));
    if list.get("name").and_then(Value::as_str).is_none_or(str::is_empty) {
        return bad("the list has no \"name\"");
    }
    if list.get("cniVersion").and_then(Value::as_str).is_none() {
        return bad("the list has no \"cniVersion\"");
    }
    let Some(plugins) = list.get("plugins").and_then(Value::as_array).filter(|p| !p.is_empty()) else {
        return bad("the list has no \"plugins\"");
    };
    for p in plugins {
        match p.get("type").and_then(Value::as_str) {
            Some(t) if !t.is_empty() && !t.contains('/') && t != "." && t != ".." => {}
            _ => return bad("a plugin has no \"type\", or its type is a path"),
        }
    }
    Ok(())
}

fn plugins(list: &Value) -> Vec<Value> {
    list.get("plugins").and_then(Value::as_array).cloned().unwrap_or_default()
}

/// ADD of every plugin of `list`, in order; on a failure what was added is
/// deleted again (the spec's rule). Returns the final result.
pub(super) async fn add_list(list: &Value, runtime: &Value, call: Call<'_>) -> Result<Value, CniError> {
    check_list(list)?;
    let mut prev: Option<Value> = None;
    for plugin in plugins(list) {
        let conf = plugin_config(list, &plugin, prev.as_ref(), runtime);
        match exec(&plugin, "ADD", &conf, call).await {
            Ok(result) => prev = Some(result),
            Err(e) => {
                if let Err(cleanup) = del_list(list, runtime, prev.as_ref(), call).await {
                    tracing::warn!(container_id = call.container_id, error = %cleanup, "CNI DEL after a failed ADD failed");
                }
                return Err(e);
            }
        }
    }
    prev.ok_or_else(|| CniError::Config("the list has no plugins".into()))
}

/// DEL of every plugin of `list`, in reverse order, each given `prev` (the
/// final ADD result, if there was one). Every plugin is called even if one
/// fails; the first failure is returned.
pub(super) async fn del_list(
    list: &Value,
    runtime: &Value,
    prev: Option<&Value>,
    call: Call<'_>,
) -> Result<(), CniError> {
    check_list(list)?;
    let mut first = None;
    for plugin in plugins(list).iter().rev() {
        let conf = plugin_config(list, plugin, prev, runtime);
        if let Err(e) = exec(plugin, "DEL", &conf, call).await {
            first.get_or_insert(e);
        }
    }
    first.map_or(Ok(()), Err)
}

/// One plugin call. The plugin runs with a minimal environment (it needs
/// `PATH` for iptables) and is killed if it takes too long.
async fn exec(plugin: &Value, command: &'static str, conf: &Value, call: Call<'_>) -> Result<Value, CniError> {
    let name = plugin.get("type").and_then(Value::as_str).unwrap_or_default().to_owned();
    let path: PathBuf = call.bin_dir.join(&name);
    if !path.is_file() {
        return Err(CniError::Missing { plugin: name, dir: call.bin_dir.display().to_string() });
    }
    let mut child = tokio::process::Command::new(&path)
        .env_clear()
        .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", call.container_id)
        .env("CNI_NETNS", call.netns)
        .env("CNI_IFNAME", call.ifname)
        .env("CNI_PATH", call.bin_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| CniError::Exec { plugin: name.clone(), source })?;
    let input = serde_json::to_vec(conf).unwrap_or_default();
    if let Some(mut stdin) = child.stdin.take() {
        // A plugin that exits without reading its input answers below.
        let _ = stdin.write_all(&input).await;
    }
    let out = match tokio::time::timeout(PLUGIN_TIMEOUT, child.wait_with_output()).await {
        Ok(r) => r.map_err(|source| CniError::Exec { plugin: name.clone(), source })?,
        Err(_) => return Err(CniError::Timeout { plugin: name }),
    };
    let stdout = &out.stdout[..out.stdout.len().min(MAX_OUTPUT)];
    if !out.status.success() {
        return Err(CniError::Failed { plugin: name, command, message: error_message(stdout, &out.stderr) });
    }
    if command == "DEL" || stdout.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    serde_json::from_slice(stdout).map_err(|e| CniError::Failed {
        plugin: name,
        command,
        message: format!("its answer is not JSON: {e}"),
    })
}

/// The message of a CNI error object (`{"code", "msg", "details"}`), or the
/// first line of stderr.
fn error_message(stdout: &[u8], stderr: &[u8]) -> String {
    let parsed: Option<Value> = serde_json::from_slice(stdout).ok();
    let from_json = parsed.as_ref().and_then(|v| {
        let msg = v.get("msg")?.as_str()?;
        let code = v.get("code").and_then(Value::as_u64).unwrap_or(0);
        Some(match v.get("details").and_then(Value::as_str).filter(|d| !d.is_empty()) {
            Some(d) => format!("{msg}: {d} (code {code})"),
            None => format!("{msg} (code {code})"),
        })
    });
    from_json.unwrap_or_else(|| {
        let text = String::from_utf8_lossy(stderr);
        let line = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("no message");
        line.chars().take(500).collect()
    })
}

/// The first IPv4 address of a result (`ips[].address`, `a.b.c.d/n`).
pub(super) fn first_ipv4(result: &Value) -> Option<std::net::Ipv4Addr> {
    result.get("ips")?.as_array()?.iter().find_map(|ip| {
        let net: ipnet::IpNet = ip.get("address")?.as_str()?.parse().ok()?;
        match net.addr() {
            std::net::IpAddr::V4(a) => Some(a),
            std::net::IpAddr::V6(_) => None,
        }
    })
}

/// The runtime config of a task: its published ports, as `portMappings`.
pub(super) fn runtime_config(ports: &[crate::model::PortMapping]) -> Value {
    let maps: Vec<Value> = ports
        .iter()
        .map(|p| {
            let mut m =
                json!({"hostPort": p.host_port, "containerPort": p.container_port, "protocol": p.protocol.as_str()});
            if let Some(ip) = p.host_ip {
                m["hostIP"] = json!(ip.to_string());
            }
            m
        })
        .collect();
    if maps.is_empty() {
        json!({})
    } else {
        json!({ "portMappings": maps })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{PortMapping, Protocol};

    fn list() -> Value {
        json!({"cniVersion": "1.0.0", "name": "berth", "plugins": [
            {"type": "bridge", "bridge": "b0"},
            {"type": "portmap", "capabilities": {"portMappings": true}},
        ]})
    }

    #[test]
    fn each_plugin_gets_the_lists_name_the_previous_result_and_only_its_capabilities() {
        let l = list();
        let rt = runtime_config(&[PortMapping {
            host_ip: Some("127.0.0.1".parse().unwrap()),
            host_port: 8080,
            container_port: 80,
            protocol: Protocol::Tcp,
        }]);
        let plugins = plugins(&l);
        let bridge = plugin_config(&l, &plugins[0], None, &rt);
        assert_eq!(bridge["name"], "berth");
        assert_eq!(bridge["cniVersion"], "1.0.0");
        assert!(bridge.get("prevResult").is_none() && bridge.get("runtimeConfig").is_none());
        let prev = json!({"ips": [{"address": "10.88.0.2/16"}]});
        let pm = plugin_config(&l, &plugins[1], Some(&prev), &rt);
        assert_eq!(pm["prevResult"], prev);
        assert_eq!(
            pm["runtimeConfig"]["portMappings"][0],
            json!({"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": "127.0.0.1"})
        );
        assert_eq!(runtime_config(&[]), json!({}));
    }

    #[test]
    fn lists_are_checked() {
        assert!(check_list(&list()).is_ok());
        for bad in [
            json!({"cniVersion": "1.0.0", "plugins": [{"type": "bridge"}]}),
            json!({"name": "n", "plugins": [{"type": "bridge"}]}),
            json!({"name": "n", "cniVersion": "1.0.0", "plugins": []}),
            json!({"name": "n", "cniVersion": "1.0.0", "plugins": [{"type": "../../bin/sh"}]}),
            json!({"name": "n", "cniVersion": "1.0.0", "plugins": [{}]}),
        ] {
            assert!(check_list(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn results_and_errors_are_read() {
        let r = json!({"ips": [{"address": "fd00::2/64"}, {"address": "10.88.0.7/16", "gateway": "10.88.0.1"}]});
        assert_eq!(first_ipv4(&r), Some("10.88.0.7".parse().unwrap()));
        assert_eq!(first_ipv4(&json!({})), None);
        let e = error_message(br#"{"code": 11, "msg": "no IP addresses available", "details": "range full"}"#, b"");
        assert_eq!(e, "no IP addresses available: range full (code 11)");
        assert_eq!(error_message(b"", b"\npanic: boom\n"), "panic: boom");
    }

    #[tokio::test]
    async fn a_missing_plugin_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let call = Call { container_id: "c", netns: "", ifname: "eth0", bin_dir: dir.path() };
        let e = add_list(&list(), &json!({}), call).await.unwrap_err();
        assert!(matches!(&e, CniError::Missing { plugin, .. } if plugin == "bridge"), "{e}");
    }

    /// A plugin that fails: the error object's message comes back, and what
    /// was added before is deleted (the DEL of every plugin is called).
    #[tokio::test]
    async fn a_failed_add_deletes_what_was_added() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("calls");
        let script = |name: &str, add: &str| {
            let p = dir.path().join(name);
            std::fs::write(
                &p,
                format!(
                    "#!/bin/sh\necho \"{name} $CNI_COMMAND $CNI_CONTAINERID\" >> {}\ncat >/dev/null\n\
                     if [ \"$CNI_COMMAND\" = ADD ]; then {add}; fi\n",
                    log.display()
                ),
            )
            .unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        };
        script("bridge", r#"echo '{"cniVersion":"1.0.0","ips":[{"address":"10.0.0.2/24"}]}'"#);
        script("portmap", r#"echo '{"code":7,"msg":"port busy"}'; exit 1"#);
        let call = Call { container_id: "c1", netns: "/x", ifname: "eth0", bin_dir: dir.path() };
        let e = add_list(&list(), &json!({}), call).await.unwrap_err();
        assert!(e.to_string().contains("port busy (code 7)"), "{e}");
        let calls = std::fs::read_to_string(&log).unwrap();
        assert_eq!(calls, "bridge ADD c1\nportmap ADD c1\nportmap DEL c1\nbridge DEL c1\n");
    }
}
