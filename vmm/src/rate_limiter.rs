//! Token-bucket I/O limits for a device queue (Firecracker's `RateLimiter`): a bytes bucket and
//! an ops bucket, each refilled continuously at `rate` tokens per second up to `burst`. A device
//! asks [`RateLimiter::consume`] before moving a frame; when a bucket is short it stops serving
//! the queue and arms a one-shot timerfd for the moment the tokens are there, so a limited queue
//! waits in epoll, never in a polling loop.

use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use vmm_sys_util::timerfd::TimerFd;

const NANOS_PER_SEC: u128 = 1_000_000_000;
/// A wait shorter than this is rounded up: arming a timerfd for nanoseconds only burns turns.
const MIN_WAIT: Duration = Duration::from_millis(1);

/// One bucket's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenBucketConfig {
    /// Tokens (bytes or operations) added per second; at least 1.
    pub rate: u64,
    /// Bucket size: how much may pass at once after an idle spell (default: one second's
    /// `rate`). A single frame larger than the bucket passes only from a full bucket.
    #[serde(default)]
    pub burst: Option<u64>,
}

/// Limits for one direction of a device: bytes per second, operations (frames) per second.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    #[serde(default)]
    pub bytes: Option<TokenBucketConfig>,
    #[serde(default)]
    pub ops: Option<TokenBucketConfig>,
}

impl RateLimit {
    /// Refuses zero rates and bursts (a bucket that never fills would stall the queue forever).
    pub fn validate(&self) -> Result<(), String> {
        for (what, b) in [("bytes", self.bytes), ("ops", self.ops)] {
            if let Some(b) = b {
                if b.rate == 0 || b.burst == Some(0) {
                    return Err(format!(
                        "rate limit {what}: rate and burst must be at least 1"
                    ));
                }
            }
        }
        Ok(())
    }
}

#[derive(Debug)]
struct TokenBucket {
    capacity: u64,
    rate: u64,
    tokens: u64,
    last: Instant,
}

impl TokenBucket {
    fn new(cfg: TokenBucketConfig, now: Instant) -> TokenBucket {
        let capacity = cfg.burst.unwrap_or(cfg.rate).max(1);
        TokenBucket {
            capacity,
            rate: cfg.rate.max(1),
            tokens: capacity,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_nanos();
        let add = elapsed * u128::from(self.rate) / NANOS_PER_SEC;
        if add == 0 {
            return;
        }
        let room = u128::from(self.capacity - self.tokens);
        if add >= room {
            self.tokens = self.capacity;
            self.last = now;
        } else {
            // `add < room <= u64::MAX`. Advance by exactly the time those tokens took, so
            // fractions of a token carry over to the next refill.
            self.tokens += u64::try_from(add).expect("below capacity");
            let spent = add * NANOS_PER_SEC / u128::from(self.rate);
            self.last += Duration::from_nanos(u64::try_from(spent).unwrap_or(u64::MAX));
        }
    }

    /// What `n` needs from this bucket: `n`, or a full bucket when `n` exceeds it.
    fn need(&self, n: u64) -> u64 {
        n.min(self.capacity)
    }

    fn has(&self, n: u64) -> bool {
        self.tokens >= self.need(n)
    }

    fn take(&mut self, n: u64) {
        self.tokens = self.tokens.saturating_sub(n);
    }

    fn wait_for(&self, n: u64) -> Duration {
        let short = u128::from(self.need(n).saturating_sub(self.tokens));
        let nanos = (short * NANOS_PER_SEC).div_ceil(u128::from(self.rate));
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX)).max(MIN_WAIT)
    }
}

/// A device queue's limiter and the timer that ends its waits.
#[derive(Debug)]
pub struct RateLimiter {
    bytes: Option<TokenBucket>,
    ops: Option<TokenBucket>,
    timer: TimerFd,
    /// Waiting for the timer: nothing passes until it fired.
    blocked: bool,
}

impl RateLimiter {
    pub fn new(cfg: &RateLimit) -> std::io::Result<RateLimiter> {
        let timer = TimerFd::new()?;
        // Read only after epoll reported it, but re-arming can zero its count in between.
        nix::fcntl::fcntl(
            timer.as_raw_fd(),
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )?;
        let now = Instant::now();
        Ok(RateLimiter {
            bytes: cfg.bytes.map(|b| TokenBucket::new(b, now)),
            ops: cfg.ops.map(|b| TokenBucket::new(b, now)),
            timer,
            blocked: false,
        })
    }

    /// Takes one operation of `bytes` if both buckets have it; otherwise takes nothing, arms
    /// the timer for when they will, and refuses until [`Self::on_timer`].
    pub fn consume(&mut self, bytes: u64) -> bool {
        if self.blocked {
            return false;
        }
        let now = Instant::now();
        let mut wait = Duration::ZERO;
        for (bucket, n) in [(&mut self.bytes, bytes), (&mut self.ops, 1)] {
            if let Some(b) = bucket {
                b.refill(now);
                if !b.has(n) {
                    wait = wait.max(b.wait_for(n));
                }
            }
        }
        if wait.is_zero() {
            if let Some(b) = &mut self.bytes {
                b.take(bytes);
            }
            if let Some(b) = &mut self.ops {
                b.take(1);
            }
            return true;
        }
        match self.timer.reset(wait, None) {
            Ok(()) => self.blocked = true,
            // Without a timer nothing would resume the queue: let this one pass instead.
            Err(e) => {
                tracing::error!("rate limiter: arming timerfd: {e}");
                return true;
            }
        }
        false
    }

    /// The timer fired: tokens are due, the queue may be served again.
    pub fn on_timer(&mut self) {
        // Non-blocking: a spurious wakeup reads EAGAIN.
        let _ = self.timer.wait();
        self.blocked = false;
    }

    pub fn is_blocked(&self) -> bool {
        self.blocked
    }

    pub fn timer_fd(&self) -> RawFd {
        self.timer.as_raw_fd()
    }

    pub fn timer(&self) -> &TimerFd {
        &self.timer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(rate: u64, burst: Option<u64>) -> Option<TokenBucketConfig> {
        Some(TokenBucketConfig { rate, burst })
    }

    #[test]
    fn bucket_refills_at_its_rate_and_caps_at_burst() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(
            TokenBucketConfig {
                rate: 1000,
                burst: Some(100),
            },
            t0,
        );
        assert!(b.has(100));
        b.take(100);
        assert!(!b.has(1));
        b.refill(t0 + Duration::from_millis(50));
        assert_eq!(b.tokens, 50);
        // Fractions carry over: 0.5 ms twice is one token.
        b.refill(t0 + Duration::from_micros(50_500));
        b.refill(t0 + Duration::from_micros(51_000));
        assert_eq!(b.tokens, 51);
        b.refill(t0 + Duration::from_secs(10));
        assert_eq!(b.tokens, 100);
        // 40 short of 100 at 1000/s: 40 ms.
        b.take(40);
        assert_eq!(b.wait_for(100), Duration::from_millis(40));
        // Larger than the bucket: needs a full bucket, then empties it.
        assert!(!b.has(1_000_000));
        b.refill(t0 + Duration::from_secs(20));
        assert!(b.has(1_000_000));
        b.take(1_000_000);
        assert_eq!(b.tokens, 0);
    }

    #[test]
    fn limiter_blocks_until_its_timer_fires() {
        let mut l = RateLimiter::new(&RateLimit {
            bytes: bucket(100_000, Some(1500)),
            ops: bucket(1, Some(2)),
        })
        .unwrap();
        assert!(l.consume(1000));
        // 500 bytes left but 1000 asked: blocked, and stays so until the timer.
        assert!(!l.consume(1000));
        assert!(l.is_blocked());
        assert!(!l.consume(1));
        // 500 bytes at 100 kB/s: about 5 ms.
        let start = Instant::now();
        // SAFETY: the timer outlives the borrow.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(l.timer_fd()) };
        let mut fds = [nix::poll::PollFd::new(fd, nix::poll::PollFlags::POLLIN)];
        assert_eq!(nix::poll::poll(&mut fds, 1000u16).unwrap(), 1);
        assert!(start.elapsed() >= Duration::from_millis(4));
        l.on_timer();
        assert!(l.consume(1000));
        // Two ops in the burst are spent.
        assert!(!l.consume(1));
    }

    #[test]
    fn zero_rates_are_refused() {
        let r = RateLimit {
            bytes: bucket(0, None),
            ops: None,
        };
        assert!(r.validate().is_err());
        let r = RateLimit {
            bytes: None,
            ops: bucket(1, Some(0)),
        };
        assert!(r.validate().is_err());
        assert!(RateLimit::default().validate().is_ok());
    }
}
