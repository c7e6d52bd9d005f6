//! Subnets: which zone a Workspace's data volume is created in, and which
//! subnet its instance is launched in. A subnet's zone and VPC never change,
//! so each subnet is described once; Workspaces that ask at the same time
//! share that one call.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::OnceCell;

use super::{CallError, Ec2Region, Family};
use crate::backend::BackendError;

/// What tend needs to know of a subnet.
#[derive(Debug, Clone)]
pub(super) struct Subnet {
    pub zone: String,
    pub vpc: String,
}

/// A subnet's region and id.
type Key = (String, String);

/// The subnets described so far; a cell being filled holds back the others
/// who ask about the same subnet.
#[derive(Default)]
pub(super) struct Subnets {
    known: Mutex<HashMap<Key, Arc<OnceCell<Subnet>>>>,
}

impl Subnets {
    /// The subnet's zone and VPC, described on first use. A failed describe
    /// is not kept: the next caller asks again.
    pub async fn get(
        &self,
        client: &Ec2Region,
        region: &str,
        id: &str,
    ) -> Result<Subnet, BackendError> {
        let cell = self
            .known
            .lock()
            .expect("subnets lock")
            .entry((region.to_owned(), id.to_owned()))
            .or_default()
            .clone();
        cell.get_or_try_init(|| describe(client, id)).await.cloned()
    }
}

async fn describe(client: &Ec2Region, id: &str) -> Result<Subnet, BackendError> {
    let out = client
        .call(
            Family::Read,
            "DescribeSubnets",
            client.describe_subnets().subnet_ids(id).send(),
        )
        .await?;
    let subnet = out
        .subnets()
        .iter()
        .find(|s| s.subnet_id() == Some(id))
        .ok_or_else(|| CallError::malformed("DescribeSubnets", "the named subnet is missing"))?;
    let zone = subnet
        .availability_zone()
        .ok_or_else(|| CallError::malformed("DescribeSubnets", "subnet without zone"))?;
    Ok(Subnet {
        zone: zone.to_owned(),
        vpc: subnet.vpc_id().unwrap_or_default().to_owned(),
    })
}
