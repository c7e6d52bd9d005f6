//! One client per region, and the one way every EC2 call is made: a token
//! from the region's bucket for its API family, then the call, its failure
//! classified, and the bucket emptied when AWS throttled it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use aws_sdk_ec2::Client;
use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};
use tokio::sync::Semaphore;

use super::{Family, Limits, TokenBucket};
use crate::backend::{CallError, ErrorKind};

/// One region's client and rate limits. Every EC2 call goes through `call`.
#[derive(Clone)]
pub struct Ec2Region {
    client: Client,
    pub(super) read: Arc<TokenBucket>,
    mutate: Arc<TokenBucket>,
}

impl std::ops::Deref for Ec2Region {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

impl Ec2Region {
    fn bucket(&self, family: Family) -> &TokenBucket {
        match family {
            Family::Read => &self.read,
            Family::Mutate => &self.mutate,
        }
    }

    /// Waits for a token of the call's family, then makes the call.
    pub async fn call<T, E, R>(
        &self,
        family: Family,
        operation: &'static str,
        call: impl Future<Output = Result<T, SdkError<E, R>>>,
    ) -> Result<T, CallError>
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug,
    {
        self.bucket(family).acquire().await;
        self.call_with_token(family, operation, call).await
    }

    /// Makes a call whose token the caller already took (so that waiting for
    /// the rate limiter does not eat into the call's timeout), classifies a
    /// failure, and empties the bucket when AWS throttled it.
    pub async fn call_with_token<T, E, R>(
        &self,
        family: Family,
        operation: &'static str,
        call: impl Future<Output = Result<T, SdkError<E, R>>>,
    ) -> Result<T, CallError>
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug,
    {
        let sent = tokio::time::Instant::now();
        let result = call.await.map_err(|e| CallError::from_sdk(operation, e));
        if let Err(e) = &result
            && e.kind == ErrorKind::Throttled
        {
            self.bucket(family).drain(sent);
        }
        result
    }
}

/// Every region's client and rate limits, created on first use, and the
/// bound on describes in flight, which every round of reads shares.
pub struct Regions {
    base: aws_sdk_ec2::Config,
    limits: Arc<Limits>,
    clients: Mutex<HashMap<String, Ec2Region>>,
    pub(super) slots: Semaphore,
}

impl Regions {
    pub fn new(base: aws_sdk_ec2::Config, limits: Arc<Limits>, max_in_flight: usize) -> Self {
        Regions {
            base,
            limits,
            clients: Mutex::new(HashMap::new()),
            slots: Semaphore::new(max_in_flight.max(1)),
        }
    }

    /// The client and rate limits of one region.
    pub fn region(&self, region: &str) -> Ec2Region {
        let mut clients = self.clients.lock().expect("client map lock");
        clients
            .entry(region.to_owned())
            .or_insert_with(|| {
                let conf = self
                    .base
                    .to_builder()
                    .region(aws_sdk_ec2::config::Region::new(region.to_owned()))
                    .build();
                Ec2Region {
                    client: Client::from_conf(conf),
                    read: self.limits.bucket(region, Family::Read),
                    mutate: self.limits.bucket(region, Family::Mutate),
                }
            })
            .clone()
    }

    /// The describe-family bucket of a region.
    pub fn read_bucket(&self, region: &str) -> Arc<TokenBucket> {
        self.region(region).read.clone()
    }
}

/// Creating calls are never retried inside the SDK: a retry whose first attempt
/// did reach EC2 would create a second resource wherever ClientToken is not
/// honoured. tend's own retry looks the resource up by tag first.
pub(super) fn single_attempt() -> aws_sdk_ec2::config::Builder {
    aws_sdk_ec2::config::Builder::default()
        .retry_config(aws_sdk_ec2::config::retry::RetryConfig::standard().with_max_attempts(1))
}
