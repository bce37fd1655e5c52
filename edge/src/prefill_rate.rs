//! The prefill rate cap: a token bucket in bits, on tokio's clock (so tests
//! run it on paused time).

use std::time::Duration;

use tokio::time::Instant;

/// Tokens are bits; they accrue at `rate_bps` up to `burst_bits`. A take
/// larger than the balance goes into debt and waits it off, so over any run
/// `bytes × 8 ≤ burst + rate × elapsed`.
#[derive(Debug)]
pub struct TokenBucket {
    rate_bps: f64,
    burst_bits: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A bucket for `rate_bps` bits per second holding at most `burst_bits`, starting empty.
    pub fn new(rate_bps: u64, burst_bits: u64) -> Self {
        Self { rate_bps: rate_bps.max(1) as f64, burst_bits: burst_bits as f64, tokens: 0.0, last: Instant::now() }
    }

    /// The configured rate.
    pub fn rate_bps(&self) -> u64 {
        self.rate_bps as u64
    }

    fn refill(&mut self) {
        let now = Instant::now();
        let earned = now.duration_since(self.last).as_secs_f64() * self.rate_bps;
        self.tokens = (self.tokens + earned).min(self.burst_bits);
        self.last = now;
    }

    /// How long a take of `bytes` would wait now.
    pub fn wait_for(&mut self, bytes: u64) -> Duration {
        self.refill();
        let short = bytes as f64 * 8.0 - self.tokens;
        if short <= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(short / self.rate_bps)
        }
    }

    /// Takes `bytes` worth of tokens, waiting until the bucket has paid for them.
    pub async fn take(&mut self, bytes: u64) {
        let wait = self.wait_for(bytes);
        self.tokens -= bytes as f64 * 8.0;
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
            self.refill();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn n_bytes_at_r_bits_per_second_take_at_least_n_times_8_over_r() {
        // 10 objects of 125 kB at 1 Mbit/s: 10 s of virtual time at least.
        let mut bucket = TokenBucket::new(1_000_000, 64_000);
        let started = Instant::now();
        for _ in 0..10 {
            bucket.take(125_000).await;
        }
        let took = started.elapsed();
        assert!(took >= Duration::from_secs(10), "{took:?}");
        assert!(took < Duration::from_millis(10_100), "no slower than needed: {took:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_bucket_saves_at_most_its_burst() {
        let mut bucket = TokenBucket::new(8_000, 16_000); // 1 kB/s, 2 kB burst
        tokio::time::sleep(Duration::from_secs(60)).await;
        let started = Instant::now();
        bucket.take(2_000).await;
        assert_eq!(started.elapsed(), Duration::ZERO, "the burst is free");
        bucket.take(1_000).await;
        assert!(started.elapsed() >= Duration::from_secs(1), "after the burst the rate holds");
    }
}
