//! Reading instances and volumes: in batches, by id, by tag.

use super::*;

impl Regions {
    /// Describes a batch of instances with the `instance-id` filter, following
    /// NextToken pages. Naming ids in `InstanceIds` would fail the whole call
    /// on one unknown id; the filter just leaves unknown ids out. Terminated
    /// instances are kept: their StateReason tells spot reclaim from a user's
    /// shutdown. The caller holds the token for the first page.
    pub async fn describe_batch(
        &self,
        region: &str,
        ids: &[String],
    ) -> Result<Vec<Seen>, CallError> {
        let filter = Filter::builder()
            .name("instance-id")
            .set_values(Some(ids.to_vec()))
            .build();
        // A batch of N ids can never need more than N pages.
        self.describe_pages(region, vec![filter], ids.len()).await
    }

    /// Describes the instances tagged with any of these Workspace uids in
    /// this cluster, following pages. The caller holds the token for the
    /// first page.
    pub async fn describe_owned(
        &self,
        region: &str,
        uids: &[String],
        cluster: &str,
    ) -> Result<Vec<Seen>, CallError> {
        let filters = vec![
            Filter::builder()
                .name(format!("tag:{TAG_UID}"))
                .set_values(Some(uids.to_vec()))
                .build(),
            tag_filter(TAG_CLUSTER, cluster),
        ];
        // Each Workspace keeps few instances (terminated ones linger for
        // about an hour); the bound only stops a runaway answer.
        self.describe_pages(region, filters, uids.len() * 10).await
    }

    /// One filtered describe, page by page, each page read into [`Seen`]
    /// as it arrives.
    async fn describe_pages(
        &self,
        region: &str,
        filters: Vec<Filter>,
        max_pages: usize,
    ) -> Result<Vec<Seen>, CallError> {
        let client = self.region(region);
        let mut found = Vec::new();
        let mut token: Option<String> = None;
        for page_number in 0..=max_pages {
            if page_number > 0 {
                client.read.acquire().await;
            }
            let page = client
                .call_with_token(
                    Family::Read,
                    "DescribeInstances",
                    // One attempt: bisection and the next sweep are the
                    // retries, and SDK back-off would hold an in-flight slot
                    // and eat into the sweep's deadline.
                    client
                        .describe_instances()
                        .set_filters(Some(filters.clone()))
                        .set_next_token(token.take())
                        .customize()
                        .config_override(single_attempt())
                        .send(),
                )
                .await?;
            found.extend(listed(page.reservations()).map(Seen::of));
            match page.next_token() {
                Some(t) if !t.is_empty() => token = Some(t.to_owned()),
                _ => return Ok(found),
            }
        }
        Err(CallError::malformed(
            "DescribeInstances",
            "more pages than could be asked for",
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
    ) -> Result<Vec<Seen>, CallError> {
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
        Ok(listed(out.reservations()).map(Seen::of).collect())
    }
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
