//! Client-side rate limits for EC2, one token bucket per region and API family.
//!
//! AWS throttles per account, region and action family, and other tools share
//! those buckets. tend keeps its own buckets below AWS's, and when AWS says it
//! is throttled it empties its bucket and halves its rate, then wins the rate
//! back a little at a time (additive increase, multiplicative decrease, as TCP
//! does). Returning straight to full speed would run into the same wall
//! again; easing back lets an account shared with other tools keep answering
//! most of the fleet each sweep. (Draining and AIMD are why this is not an
//! off-the-shelf limiter.)

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// After a throttle, the rate grows back by the full rate per this long
/// (from half of it, in half this time).
pub const RECOVERY: Duration = Duration::from_secs(30);
/// However often AWS throttles, the rate stays at least this share of the
/// configured one: the sweep must still make progress.
const FLOOR: f64 = 1.0 / 16.0;

/// A token bucket: `burst` tokens, refilled at `rate` per second, less
/// after a throttle.
#[derive(Debug)]
pub struct TokenBucket {
    /// The configured rate: the most the bucket ever refills at.
    ceiling: f64,
    burst: f64,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    tokens: f64,
    at: Instant,
    /// The rate set by the last throttle, and when: it grows back from
    /// there. `None`: never throttled, full rate.
    cut: Option<(f64, Instant)>,
}

impl TokenBucket {
    pub fn new(rate: f64, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        TokenBucket {
            ceiling: rate.max(0.001),
            burst,
            state: Mutex::new(State {
                tokens: burst,
                at: Instant::now(),
                cut: None,
            }),
        }
    }

    /// The refill rate at `now`: the configured one, or after a throttle
    /// the cut rate plus what it has won back since.
    fn rate_at(&self, state: &State, now: Instant) -> f64 {
        match state.cut {
            None => self.ceiling,
            Some((rate, at)) => {
                let regained = now.duration_since(at).as_secs_f64() / RECOVERY.as_secs_f64();
                (rate + regained * self.ceiling).min(self.ceiling)
            }
        }
    }

    /// Adds what has been refilled up to `now`: the rate grows linearly
    /// after a throttle, so the mean of both ends is exact until it tops out.
    fn refill(&self, state: &mut State, now: Instant) {
        let elapsed = now.duration_since(state.at).as_secs_f64();
        let mean = (self.rate_at(state, state.at) + self.rate_at(state, now)) / 2.0;
        state.tokens = (state.tokens + elapsed * mean).min(self.burst);
        state.at = now;
    }

    /// Takes one token, waiting for it if need be. Returns how long it waited.
    pub async fn acquire(&self) -> Duration {
        let start = Instant::now();
        loop {
            let wait = {
                let mut s = self.state.lock().expect("bucket lock");
                let now = Instant::now();
                self.refill(&mut s, now);
                if s.tokens >= 1.0 {
                    s.tokens -= 1.0;
                    return start.elapsed();
                }
                // At least a millisecond: a deficit that rounds to a zero sleep
                // would spin without letting the clock move.
                Duration::from_secs_f64((1.0 - s.tokens) / self.rate_at(&s, now))
                    .max(Duration::from_millis(1))
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// Called when AWS answered a call sent at `sent` with throttling:
    /// empties the bucket and halves the rate (down to a floor), which then
    /// grows back. Calls that were already out when the rate was cut are
    /// part of the same throttle and cut it no further, as TCP halves its
    /// window once per loss, not once per lost packet.
    pub fn drain(&self, sent: Instant) {
        let mut s = self.state.lock().expect("bucket lock");
        let now = Instant::now();
        s.tokens = 0.0;
        s.at = now;
        if s.cut.is_some_and(|(_, at)| sent < at) {
            return;
        }
        let halved = (self.rate_at(&s, now) / 2.0).max(self.ceiling * FLOOR);
        s.cut = Some((halved, now));
    }

    pub fn available(&self) -> f64 {
        let mut s = self.state.lock().expect("bucket lock");
        self.refill(&mut s, Instant::now());
        s.tokens
    }

    /// The rate the bucket refills at now, in tokens per second.
    pub fn rate(&self) -> f64 {
        let s = self.state.lock().expect("bucket lock");
        self.rate_at(&s, Instant::now())
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
        b.drain(Instant::now());
        assert!(b.available() < 1.0);
        assert!(b.acquire().await >= Duration::from_millis(99));
    }

    #[tokio::test(start_paused = true)]
    async fn a_throttle_halves_the_rate_which_grows_back_a_little_at_a_time() {
        let b = TokenBucket::new(16.0, 1);
        b.drain(Instant::now());
        assert_eq!(b.rate(), 8.0);
        // Won back linearly: a quarter of the way after a quarter of the time.
        tokio::time::advance(RECOVERY / 4).await;
        assert!((b.rate() - 12.0).abs() < 1e-6, "{}", b.rate());
        tokio::time::advance(RECOVERY).await;
        assert_eq!(b.rate(), 16.0, "never above the configured rate");
        // A throttle while recovering halves what was won back so far.
        b.drain(Instant::now());
        tokio::time::advance(RECOVERY / 4).await;
        b.drain(Instant::now());
        assert!((b.rate() - 6.0).abs() < 1e-6, "{}", b.rate());
    }

    #[tokio::test(start_paused = true)]
    async fn repeated_throttles_slow_down_to_a_floor_not_to_a_stop() {
        let b = TokenBucket::new(16.0, 1);
        for _ in 0..20 {
            b.drain(Instant::now());
            tokio::time::advance(Duration::from_millis(10)).await;
        }
        assert!((b.rate() - 1.0).abs() < 0.1, "{}", b.rate());
        let waited = b.acquire().await;
        assert!(waited <= Duration::from_millis(1001), "{waited:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn calls_already_out_when_the_rate_was_cut_do_not_cut_it_again() {
        let b = TokenBucket::new(16.0, 8);
        let sent = Instant::now();
        tokio::time::advance(Duration::from_millis(100)).await;
        // Eight calls sent together, all throttled.
        for _ in 0..8 {
            b.drain(sent);
        }
        assert_eq!(b.rate(), 8.0);
        assert!(
            b.available() < 1.0,
            "each throttled answer still empties it"
        );
        // A call sent after the cut and throttled again cuts again.
        b.drain(Instant::now());
        assert_eq!(b.rate(), 4.0);
    }

    #[tokio::test(start_paused = true)]
    async fn after_a_throttle_the_bucket_hands_out_fewer_tokens() {
        let b = TokenBucket::new(10.0, 1);
        b.acquire().await;
        let start = Instant::now();
        for _ in 0..10 {
            b.acquire().await;
        }
        let full = start.elapsed();
        b.drain(Instant::now());
        let start = Instant::now();
        for _ in 0..10 {
            b.acquire().await;
        }
        let after = start.elapsed();
        // 10 tokens take 1 s at full rate; at the halved, recovering rate
        // (5/s plus 1/3 per second per second) about 1.7 s.
        assert!(
            after > full + Duration::from_millis(500),
            "{full:?} vs {after:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_drained_bucket_waits_instead_of_spinning() {
        let b = TokenBucket::new(15.0, 75);
        b.drain(Instant::now());
        for _ in 0..20 {
            b.acquire().await;
        }
        assert!(b.available() < 1.0);
    }
}
