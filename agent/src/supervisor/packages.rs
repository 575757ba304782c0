//! Application packages: the node's (config `[staging] application_packages`
//! and `ConfigureApplicationPackages`, announced to every task) and each
//! task's own (announced to it alone). Installing is `staging::Packages`'s;
//! here is which packages a task gets, and which the node may remove: a
//! package is referenced by the node's set and by every task not yet
//! completed that names it, counted from the task records (so the count
//! survives a restart of the agent).

use super::{Error, Supervisor};
use crate::model::{AppPackage, PackageId, TaskState};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;

/// The setting ConfigureApplicationPackages's set is kept under (URLs
/// without their queries: what is installed is not downloaded again).
const NODE_PACKAGES: &str = "application_packages";

/// One package on the node, for GetNode and ConfigureApplicationPackages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageStatus {
    pub id: PackageId,
    pub path: PathBuf,
    pub node_level: bool,
    pub task_references: u32,
}

pub(super) struct NodePackages {
    pub(super) installed: crate::staging::Packages,
    /// From the config file: always the node's.
    config: Vec<AppPackage>,
    /// From ConfigureApplicationPackages.
    set: Mutex<Vec<AppPackage>>,
    /// One ConfigureApplicationPackages at a time.
    configuring: tokio::sync::Mutex<()>,
}

impl NodePackages {
    pub(super) fn new(applications: PathBuf, config: Vec<AppPackage>) -> Self {
        Self {
            installed: crate::staging::Packages::new(applications),
            config,
            set: Mutex::default(),
            configuring: Default::default(),
        }
    }

    fn set(&self) -> std::sync::MutexGuard<'_, Vec<AppPackage>> {
        self.set.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The node's packages: the config file's, then the RPC's (one per id and version).
    pub(super) fn node_level(&self) -> Vec<AppPackage> {
        let mut out = self.config.clone();
        for p in self.set().iter() {
            if !out.iter().any(|o| o.id == p.id) {
                out.push(p.clone());
            }
        }
        out
    }
}

/// The packages a task gets: the node's, then its own (its own URL wins for
/// a package both name).
pub(super) fn for_task(node: Vec<AppPackage>, own: &[AppPackage]) -> Vec<AppPackage> {
    let mut out: Vec<AppPackage> = node.into_iter().filter(|n| !own.iter().any(|o| o.id == n.id)).collect();
    out.extend(own.iter().cloned());
    out
}

impl Supervisor {
    /// The packages a task gets (see [`for_task`]).
    pub(super) fn task_packages(&self, spec: &crate::model::TaskSpec) -> Vec<AppPackage> {
        for_task(self.shared.packages.node_level(), &spec.staging.application_packages)
    }

    /// Reads the node's package set and clears what a killed install left.
    pub(super) async fn load_packages(&self) -> Result<(), Error> {
        let set: Option<Vec<AppPackage>> = self.shared.store.setting(NODE_PACKAGES).await?;
        *self.shared.packages.set() = set.unwrap_or_default();
        self.shared.packages.installed.remove_partials();
        Ok(())
    }

    /// Installs the config file's packages (at start-up; a failure is a note).
    pub async fn install_config_packages(&self) {
        let packages = &self.shared.packages;
        for p in &packages.config {
            if let Err(e) = packages.installed.ensure(&self.shared.settings.staging, p).await {
                tracing::error!(package = %p.id, error = %e, "cannot install a configured application package");
                self.note(format!("application package {} ([staging] application_packages): {e}", p.id));
            }
        }
    }

    /// Sets the node's packages: installs each, then keeps the set and
    /// removes what nothing references any more.
    pub async fn configure_application_packages(&self, packages: Vec<AppPackage>) -> Result<Vec<PackageStatus>, Error> {
        let node = &self.shared.packages;
        let _one = node.configuring.lock().await;
        for p in &packages {
            node.installed.ensure(&self.shared.settings.staging, p).await.map_err(Error::Package)?;
        }
        self.shared.store.put_setting(NODE_PACKAGES, Some(&packages)).await?;
        *node.set() = packages;
        let keep = node.node_level();
        for id in node.installed.installed() {
            if keep.iter().any(|p| p.id == id) {
                continue;
            }
            let lock = node.installed.lock(&id);
            let _held = lock.lock().await;
            // Counted under the package's lock: a task that starts to use it
            // after this waits, and installs it again.
            if self.references().await?.get(&id).copied().unwrap_or(0) == 0 {
                node.installed.remove(&id).map_err(|e| Error::Precondition {
                    reason: format!("cannot remove application package {id}: {e}"),
                })?;
            }
        }
        self.application_packages().await
    }

    /// Tasks not yet completed, per package they name.
    async fn references(&self) -> Result<BTreeMap<PackageId, u32>, Error> {
        let mut refs = BTreeMap::new();
        for t in self.shared.store.list(None, None).await? {
            if t.state == TaskState::Completed {
                continue;
            }
            for p in &t.spec.staging.application_packages {
                *refs.entry(p.id.clone()).or_insert(0) += 1;
            }
        }
        Ok(refs)
    }

    /// Every package on the node.
    pub async fn application_packages(&self) -> Result<Vec<PackageStatus>, Error> {
        let node = &self.shared.packages;
        let installed = node.installed.installed();
        if installed.is_empty() {
            return Ok(Vec::new());
        }
        let refs = self.references().await?;
        let level = node.node_level();
        Ok(installed
            .into_iter()
            .map(|id| PackageStatus {
                path: node.installed.path(&id),
                node_level: level.iter().any(|p| p.id == id),
                task_references: refs.get(&id).copied().unwrap_or(0),
                id,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::SecretUrl;

    fn p(id: &str, url: &str) -> AppPackage {
        AppPackage { id: PackageId::new(id, "1").unwrap(), url: SecretUrl::parse(url).unwrap() }
    }

    #[test]
    fn a_task_gets_the_nodes_packages_and_its_own() {
        let got =
            for_task(vec![p("a", "http://n/a"), p("b", "http://n/b")], &[p("b", "http://t/b"), p("c", "http://t/c")]);
        let urls: Vec<String> = got.iter().map(|p| p.url.redacted()).collect();
        assert_eq!(urls, ["http://n/a", "http://t/b", "http://t/c"]);
    }
}
