//! Who owns a backend resource: the Workspace it was made for, in one cluster.

use crate::api::Workspace;

/// The label naming the Workspace an object is for: on what tend creates
/// for it, and on an agent's heartbeat Lease.
pub const LABEL_WORKSPACE: &str = "tend.dev/workspace";

/// The Workspace (and cluster) that owns a resource.
#[derive(Debug, Clone, Copy)]
pub struct Owner<'a> {
    pub uid: &'a str,
    pub cluster: &'a str,
    pub namespace: &'a str,
    pub name: &'a str,
}

impl<'a> Owner<'a> {
    /// The owner a Workspace's resources are marked with.
    pub fn of(ws: &'a Workspace, cluster: &'a str) -> Self {
        Owner {
            uid: ws.metadata.uid.as_deref().unwrap_or_default(),
            cluster,
            namespace: ws.metadata.namespace.as_deref().unwrap_or_default(),
            name: ws.metadata.name.as_deref().unwrap_or_default(),
        }
    }
}
