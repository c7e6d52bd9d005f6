//! Reading instances and volumes: in batches, by id, by tag.

use super::*;

impl Ec2Backend {
    /// Describes a batch of instances with the `instance-id` filter, following
    /// NextToken pages. Naming ids in `InstanceIds` would fail the whole call
    /// on one unknown id; the filter just leaves unknown ids out. Terminated
    /// instances are kept: their StateReason tells spot reclaim from a user's
    /// shutdown. The caller holds the token for the first page.
    pub async fn describe_batch(
        &self,
        region: &str,
        ids: &[String],
    ) -> Result<Vec<Instance>, CallError> {
        let client = self.region(region);
        let mut found = Vec::with_capacity(ids.len());
        let mut token: Option<String> = None;
        // Bounded: a batch of N ids can never need more than N pages.
        for page_number in 0..=ids.len() {
            if page_number > 0 {
                client.read.acquire().await;
            }
            let filter = Filter::builder()
                .name("instance-id")
                .set_values(Some(ids.to_vec()))
                .build();
            let page = client
                .call_with_token(
                    Family::Read,
                    "DescribeInstances",
                    // One attempt: bisection and the next sweep are the
                    // retries, and SDK back-off would hold an in-flight slot
                    // and eat into the sweep's deadline.
                    client
                        .describe_instances()
                        .filters(filter)
                        .set_next_token(token.take())
                        .customize()
                        .config_override(single_attempt())
                        .send(),
                )
                .await?;
            found.extend(listed(page.reservations()).cloned());
            match page.next_token() {
                Some(t) if !t.is_empty() => token = Some(t.to_owned()),
                _ => return Ok(found),
            }
        }
        Err(CallError::malformed(
            "DescribeInstances",
            "more pages than ids",
        ))
    }

    /// Describes instances by naming them (`InstanceIds`), to prove absence:
    /// if any id is unknown the whole call fails with
    /// `InvalidInstanceID.NotFound`, naming the unknown ids. One page, since
    /// paging cannot be combined with `InstanceIds`. The caller holds the
    /// token.
    pub async fn describe_by_ids(
        &self,
        region: &str,
        ids: &[String],
    ) -> Result<Vec<Instance>, CallError> {
        let client = self.region(region);
        let out = client
            .call_with_token(
                Family::Read,
                "DescribeInstances",
                client
                    .describe_instances()
                    .set_instance_ids(Some(ids.to_vec()))
                    .customize()
                    .config_override(single_attempt())
                    .send(),
            )
            .await?;
        Ok(listed(out.reservations()).cloned().collect())
    }
}

/// Describes one instance by the `instance-id` filter: an unknown id yields
/// an empty answer instead of failing the call.
pub(super) async fn describe_instance(
    client: &Ec2Region,
    id: &str,
) -> Result<Option<aws_sdk_ec2::types::Instance>, CallError> {
    let out = client
        .call(
            Family::Read,
            "DescribeInstances",
            client
                .describe_instances()
                .filters(Filter::builder().name("instance-id").values(id).build())
                .send(),
        )
        .await?;
    Ok(listed(out.reservations())
        .find(|i| i.instance_id() == Some(id))
        .cloned())
}

pub(super) async fn tagged_instances(
    client: &Ec2Region,
    owner: &Owner<'_>,
) -> Result<Vec<aws_sdk_ec2::types::Instance>, CallError> {
    let out = client
        .call(
            Family::Read,
            "DescribeInstances",
            client
                .describe_instances()
                .set_filters(Some(owned_by(owner)))
                .send(),
        )
        .await?;
    Ok(listed(out.reservations()).cloned().collect())
}

pub(super) async fn describe_volume(
    client: &Ec2Region,
    id: &str,
) -> Result<Option<Volume>, CallError> {
    let out = client
        .call(
            Family::Read,
            "DescribeVolumes",
            client
                .describe_volumes()
                .filters(Filter::builder().name("volume-id").values(id).build())
                .send(),
        )
        .await?;
    Ok(out
        .volumes()
        .iter()
        .find(|v| v.volume_id() == Some(id))
        .cloned())
}

/// The instances a DescribeInstances answer lists, across its reservations.
pub(super) fn listed(
    reservations: &[aws_sdk_ec2::types::Reservation],
) -> impl Iterator<Item = &Instance> {
    reservations.iter().flat_map(|r| r.instances())
}
