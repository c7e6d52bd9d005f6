//! Reading instances and volumes: in batches, by id, by tag, page by page.

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
        let filters = owners_filters(uids, cluster);
        // Each Workspace keeps few instances (terminated ones linger for
        // about an hour); the bound only stops a runaway answer.
        self.describe_pages(region, filters, uids.len() * 10).await
    }

    /// One filtered DescribeInstances, page by page, each page read into
    /// [`Seen`] as it arrives.
    async fn describe_pages(
        &self,
        region: &str,
        filters: Vec<Filter>,
        max_pages: usize,
    ) -> Result<Vec<Seen>, CallError> {
        let client = self.region(region);
        pages(
            &client,
            "DescribeInstances",
            max_pages,
            |token| {
                client.call_with_token(
                    Family::Read,
                    "DescribeInstances",
                    // One attempt: bisection and the next sweep are the
                    // retries, and SDK back-off would hold an in-flight slot
                    // and eat into the sweep's deadline.
                    client
                        .describe_instances()
                        .set_filters(Some(filters.clone()))
                        .set_next_token(token)
                        .customize()
                        .config_override(single_attempt())
                        .send(),
                )
            },
            |page| {
                let found = listed(page.reservations()).map(Seen::of).collect();
                (found, page.next_token().map(str::to_owned))
            },
        )
        .await
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

    /// Describes a batch of volumes with the `volume-id` filter, following
    /// pages; unknown ids are left out. The caller holds the token for the
    /// first page.
    pub async fn describe_volumes_batch(
        &self,
        region: &str,
        ids: &[String],
    ) -> Result<Vec<VolumeSeen>, CallError> {
        let filter = Filter::builder()
            .name("volume-id")
            .set_values(Some(ids.to_vec()))
            .build();
        self.describe_volume_pages(region, vec![filter], ids.len())
            .await
    }

    /// Describes the volumes tagged with any of these Workspace uids in this
    /// cluster (data and root volumes alike), following pages. The caller
    /// holds the token for the first page.
    pub async fn describe_owned_volumes(
        &self,
        region: &str,
        uids: &[String],
        cluster: &str,
    ) -> Result<Vec<VolumeSeen>, CallError> {
        self.describe_volume_pages(region, owners_filters(uids, cluster), uids.len() * 10)
            .await
    }

    /// Describes volumes by naming them (`VolumeIds`), to prove absence: if
    /// any id is unknown the whole call fails with `InvalidVolume.NotFound`,
    /// naming unknown ids. The caller holds the token.
    pub async fn describe_volumes_by_ids(
        &self,
        region: &str,
        ids: &[String],
    ) -> Result<Vec<VolumeSeen>, CallError> {
        let client = self.region(region);
        let out = client
            .call_with_token(
                Family::Read,
                "DescribeVolumes",
                client
                    .describe_volumes()
                    .set_volume_ids(Some(ids.to_vec()))
                    .customize()
                    .config_override(single_attempt())
                    .send(),
            )
            .await?;
        Ok(out.volumes().iter().map(VolumeSeen::of).collect())
    }

    async fn describe_volume_pages(
        &self,
        region: &str,
        filters: Vec<Filter>,
        max_pages: usize,
    ) -> Result<Vec<VolumeSeen>, CallError> {
        let client = self.region(region);
        pages(
            &client,
            "DescribeVolumes",
            max_pages,
            |token| {
                client.call_with_token(
                    Family::Read,
                    "DescribeVolumes",
                    client
                        .describe_volumes()
                        .set_filters(Some(filters.clone()))
                        .set_next_token(token)
                        .customize()
                        .config_override(single_attempt())
                        .send(),
                )
            },
            |page| {
                let found = page.volumes().iter().map(VolumeSeen::of).collect();
                (found, page.next_token().map(str::to_owned))
            },
        )
        .await
    }
}

/// Follows a describe's NextToken pages, at most `max_pages`, each read by
/// `read` into what tend keeps and the next token. The first page's token
/// is the caller's; each further page takes one from the read bucket.
async fn pages<P, T, Fut>(
    client: &Ec2Region,
    operation: &'static str,
    max_pages: usize,
    mut call: impl FnMut(Option<String>) -> Fut,
    read: impl Fn(&P) -> (Vec<T>, Option<String>),
) -> Result<Vec<T>, CallError>
where
    Fut: Future<Output = Result<P, CallError>>,
{
    let mut found = Vec::new();
    let mut token: Option<String> = None;
    for page_number in 0..=max_pages {
        if page_number > 0 {
            client.read.acquire().await;
        }
        let page = call(token.take()).await?;
        let (listed, next) = read(&page);
        found.extend(listed);
        match next {
            Some(t) if !t.is_empty() => token = Some(t),
            _ => return Ok(found),
        }
    }
    Err(CallError::malformed(
        operation,
        "more pages than could be asked for",
    ))
}

/// Filters for what any of these Workspaces owns in tend's cluster.
fn owners_filters(uids: &[String], cluster: &str) -> Vec<Filter> {
    vec![
        Filter::builder()
            .name(format!("tag:{TAG_UID}"))
            .set_values(Some(uids.to_vec()))
            .build(),
        tag_filter(TAG_CLUSTER, cluster),
    ]
}

/// The instances a DescribeInstances answer lists, across its reservations.
pub(super) fn listed(
    reservations: &[aws_sdk_ec2::types::Reservation],
) -> impl Iterator<Item = &Instance> {
    reservations.iter().flat_map(|r| r.instances())
}
