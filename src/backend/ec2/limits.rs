//! Client-side rate limits for EC2, one token bucket per region and API family.
//!
//! AWS throttles per account, region and action family, and other tools share
//! those buckets. tend keeps its own buckets below AWS's and empties one when
//! AWS says it is throttled, so it backs off instead of starving everyone else.
//! (Draining on a throttle is why this is not an off-the-shelf limiter.)

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// A token bucket: `burst` tokens, refilled at `rate` per second.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl TokenBucket {
    pub fn new(rate: f64, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        TokenBucket {
            rate: rate.max(0.001),
            burst,
            state: Mutex::new((burst, Instant::now())),
        }
    }

    /// Takes one token, waiting for it if need be. Returns how long it waited.
    pub async fn acquire(&self) -> Duration {
        let start = Instant::now();
        loop {
            let wait = {
                let mut s = self.state.lock().expect("bucket lock");
                let now = Instant::now();
                s.0 = (s.0 + now.duration_since(s.1).as_secs_f64() * self.rate).min(self.burst);
                s.1 = now;
                if s.0 >= 1.0 {
                    s.0 -= 1.0;
                    return start.elapsed();
                }
                // At least a millisecond: a deficit that rounds to a zero sleep
                // would spin without letting the clock move.
                Duration::from_secs_f64((1.0 - s.0) / self.rate).max(Duration::from_millis(1))
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// Empties the bucket: called when AWS answers with throttling.
    pub fn drain(&self) {
        let mut s = self.state.lock().expect("bucket lock");
        s.0 = 0.0;
        s.1 = Instant::now();
    }

    pub fn available(&self) -> f64 {
        let s = self.state.lock().expect("bucket lock");
        (s.0 + Instant::now().duration_since(s.1).as_secs_f64() * self.rate).min(self.burst)
    }
}

/// The two EC2 API families tend uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// Describe* calls.
    Read,
    /// Run, Start, Stop, Terminate, CreateVolume, AttachVolume, DeleteVolume.
    Mutate,
}

/// Bucket sizes for one family.
#[derive(Debug, Clone, Copy)]
pub struct Rate {
    pub per_second: f64,
    pub burst: u32,
}

/// The buckets of every region, created on first use and shared by the sweeper
/// and the reconciler.
#[derive(Debug)]
pub struct Limits {
    read: Rate,
    mutate: Rate,
    buckets: Mutex<HashMap<(String, Family), Arc<TokenBucket>>>,
}

impl Limits {
    pub fn new(read: Rate, mutate: Rate) -> Self {
        Limits {
            read,
            mutate,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    pub fn bucket(&self, region: &str, family: Family) -> Arc<TokenBucket> {
        let rate = match family {
            Family::Read => self.read,
            Family::Mutate => self.mutate,
        };
        self.buckets
            .lock()
            .expect("limits lock")
            .entry((region.to_owned(), family))
            .or_insert_with(|| Arc::new(TokenBucket::new(rate.per_second, rate.burst)))
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn burst_is_free_then_the_rate_paces() {
        let b = TokenBucket::new(10.0, 5);
        for _ in 0..5 {
            assert_eq!(b.acquire().await, Duration::ZERO);
        }
        let waited = b.acquire().await;
        assert!(
            waited >= Duration::from_millis(99) && waited <= Duration::from_millis(101),
            "{waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_throttle_empties_the_bucket() {
        let b = TokenBucket::new(10.0, 50);
        b.drain();
        assert!(b.available() < 1.0);
        assert!(b.acquire().await >= Duration::from_millis(99));
    }

    #[tokio::test(start_paused = true)]
    async fn a_drained_bucket_waits_instead_of_spinning() {
        let b = TokenBucket::new(15.0, 75);
        b.drain();
        for _ in 0..20 {
            b.acquire().await;
        }
        assert!(b.available() < 1.0);
    }
}
