//! Sabre's network model on a virtual clock: a looping trace of periods, each
//! with a bandwidth and a per-request latency. Time spent anywhere (latency,
//! transfer, idle) consumes the trace.

use vod::trace::{NetworkPeriod, NetworkTrace};

use crate::abr::DownloadProgress;

/// Abandonment checks happen after at least this many bits arrived (Sabre's `min_progress_size`)…
const MIN_PROGRESS_BITS: f64 = 12_000.0;
/// …and at least this much time passed (Sabre's `min_progress_time`).
const MIN_PROGRESS_MS: f64 = 50.0;

/// The outcome of one simulated request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Download {
    /// Full size of the object.
    pub size_bits: f64,
    /// Bits received (less than the size when abandoned).
    pub downloaded_bits: f64,
    /// Total time, latency included.
    pub time_ms: f64,
    /// Latency part of `time_ms`.
    pub time_to_first_bit_ms: f64,
    /// Set when the ABR abandoned the download for this rung.
    pub abandoned_to: Option<usize>,
}

/// Asked during a download whether to abandon it: `Some(rung)` gives up for that rung.
pub type AbandonCheck<'c> = &'c mut dyn FnMut(&DownloadProgress) -> Option<usize>;

/// Where each period of one pass starts, to jump to any time in O(log n).
#[derive(Debug, Clone)]
pub struct TraceIndex {
    starts: Vec<f64>,
    pass_ms: f64,
}

impl TraceIndex {
    /// Index `trace`.
    pub fn new(trace: &NetworkTrace) -> Self {
        let mut starts = Vec::with_capacity(trace.periods().len());
        let mut t = 0.0;
        for p in trace.periods() {
            starts.push(t);
            t += p.duration_ms as f64;
        }
        Self { starts, pass_ms: t }
    }
}

/// A position in a looping trace.
#[derive(Debug, Clone)]
pub struct NetworkModel<'a> {
    trace: &'a [NetworkPeriod],
    index: usize,
    time_to_next: f64,
    now_ms: f64,
}

impl<'a> NetworkModel<'a> {
    /// At the start of the trace.
    pub fn new(trace: &'a NetworkTrace) -> Self {
        let periods = trace.periods();
        Self { trace: periods, index: 0, time_to_next: periods[0].duration_ms as f64, now_ms: 0.0 }
    }

    /// At `offset_ms` into the (looped) trace.
    pub fn at(trace: &'a NetworkTrace, offset_ms: f64) -> Self {
        let mut m = Self::new(trace);
        let pass = trace.duration_ms() as f64;
        m.delay(offset_ms.max(0.0) % pass);
        m.now_ms = offset_ms.max(0.0);
        m
    }

    /// At `offset_ms` into the (looped) trace, found by binary search in `index` (built from the same trace).
    pub fn at_indexed(trace: &'a NetworkTrace, index: &TraceIndex, offset_ms: f64) -> Self {
        let periods = trace.periods();
        let into = offset_ms.max(0.0) % index.pass_ms;
        let i = index.starts.partition_point(|&s| s <= into).saturating_sub(1);
        let time_to_next = (periods[i].duration_ms as f64 - (into - index.starts[i])).max(0.0);
        Self { trace: periods, index: i, time_to_next, now_ms: offset_ms.max(0.0) }
    }

    /// Virtual time elapsed since the model started.
    pub fn now_ms(&self) -> f64 {
        self.now_ms
    }

    /// The period in force now.
    pub fn current(&self) -> &NetworkPeriod {
        &self.trace[self.index]
    }

    fn next_period(&mut self) {
        self.index = (self.index + 1) % self.trace.len();
        self.time_to_next = self.trace[self.index].duration_ms as f64;
    }

    fn advance(&mut self, time: f64) {
        self.time_to_next -= time;
        self.now_ms += time;
    }

    fn finish_period(&mut self) {
        self.now_ms += self.time_to_next;
        self.next_period();
    }

    /// Let `time_ms` pass with nothing on the wire.
    pub fn delay(&mut self, mut time_ms: f64) {
        while time_ms > self.time_to_next {
            time_ms -= self.time_to_next;
            self.finish_period();
        }
        self.advance(time_ms);
    }

    /// Wait out `units` request latencies (a latency spanning periods uses each period's own); returns the time taken.
    fn latency_delay(&mut self, mut units: f64) -> f64 {
        let mut total = 0.0;
        while units > 0.0 {
            let latency = self.current().latency_ms;
            let time = units * latency;
            if time <= self.time_to_next {
                total += time;
                self.advance(time);
                units = 0.0;
            } else {
                // time > time_to_next implies latency > 0.
                total += self.time_to_next;
                units -= self.time_to_next / latency;
                self.finish_period();
            }
        }
        total
    }

    /// Transfer `size` bits; returns the time taken.
    pub fn transfer(&mut self, mut size: f64) -> f64 {
        let mut total = 0.0;
        while size > 0.0 {
            let bw = self.current().bandwidth_kbps;
            if size <= self.time_to_next * bw {
                let time = size / bw;
                total += time;
                self.advance(time);
                size = 0.0;
            } else {
                total += self.time_to_next;
                size -= self.time_to_next * bw;
                self.finish_period();
            }
        }
        total
    }

    /// Transfer until at least `min_size` bits and `min_time` ms passed (or `size` is done);
    /// returns (bits, time).
    fn minimal_transfer(&mut self, mut size: f64, mut min_size: f64, mut min_time: f64) -> (f64, f64) {
        let mut total_size = 0.0;
        let mut total_time = 0.0;
        while size > 0.0 && (min_size > 0.0 || min_time > 0.0) {
            let bw = self.current().bandwidth_kbps;
            let (bits, time);
            if bw > 0.0 {
                let min_bits = min_size.max(min_time * bw);
                let bits_to_next = self.time_to_next * bw;
                if size <= min_bits && size <= bits_to_next {
                    bits = size;
                    time = bits / bw;
                    self.advance(time);
                } else if min_bits <= bits_to_next {
                    bits = min_bits;
                    time = bits / bw;
                    // Zero the minimums so rounding cannot keep the loop going.
                    min_size = 0.0;
                    min_time = 0.0;
                    self.advance(time);
                } else {
                    bits = bits_to_next;
                    time = self.time_to_next;
                    self.finish_period();
                }
            } else {
                bits = 0.0;
                if min_size > 0.0 || min_time > self.time_to_next {
                    time = self.time_to_next;
                    self.finish_period();
                } else {
                    time = min_time;
                    self.advance(time);
                }
            }
            total_size += bits;
            total_time += time;
            size -= bits;
            min_size -= bits;
            min_time -= time;
        }
        (total_size, total_time)
    }

    /// Request `size_bits`: one latency, then the transfer. With `check`, the
    /// ABR is asked every few kilobits whether to abandon (it gets the progress
    /// so far and returns `Some(rung)` to give up).
    pub fn download(&mut self, size_bits: f64, rung: usize, check: Option<AbandonCheck<'_>>) -> Download {
        if size_bits <= 0.0 {
            return Download {
                size_bits: 0.0,
                downloaded_bits: 0.0,
                time_ms: 0.0,
                time_to_first_bit_ms: 0.0,
                abandoned_to: None,
            };
        }
        let latency = self.latency_delay(1.0);
        let Some(check) = check else {
            let time = latency + self.transfer(size_bits);
            return Download {
                size_bits,
                downloaded_bits: size_bits,
                time_ms: time,
                time_to_first_bit_ms: latency,
                abandoned_to: None,
            };
        };
        let mut total_time = latency;
        let mut total_size = 0.0;
        let mut min_time = MIN_PROGRESS_MS - latency;
        let mut min_size = MIN_PROGRESS_BITS;
        let mut abandoned_to = None;
        while total_size < size_bits && abandoned_to.is_none() {
            let (bits, time) = self.minimal_transfer(size_bits - total_size, min_size, min_time);
            total_time += time;
            total_size += bits;
            if total_size < size_bits {
                let progress = DownloadProgress {
                    rung,
                    size_bits,
                    downloaded_bits: total_size,
                    elapsed_ms: total_time,
                    time_to_first_bit_ms: latency,
                };
                abandoned_to = check(&progress);
                min_time = MIN_PROGRESS_MS;
                min_size = MIN_PROGRESS_BITS;
            }
        }
        Download {
            size_bits,
            downloaded_bits: total_size,
            time_ms: total_time,
            time_to_first_bit_ms: latency,
            abandoned_to,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trace(periods: &[(u64, f64, f64)]) -> NetworkTrace {
        NetworkTrace::new(
            periods
                .iter()
                .map(|&(d, b, l)| NetworkPeriod { duration_ms: d, bandwidth_kbps: b, latency_ms: l })
                .collect(),
        )
        .unwrap()
    }

    #[test]
    fn download_is_latency_plus_size_over_bandwidth() {
        let t = trace(&[(10_000, 1000.0, 100.0)]);
        let mut n = NetworkModel::new(&t);
        let d = n.download(500_000.0, 0, None);
        assert_eq!(d.time_to_first_bit_ms, 100.0);
        assert!((d.time_ms - 600.0).abs() < 1e-9);
        assert!((n.now_ms() - 600.0).abs() < 1e-9);
    }

    #[test]
    fn transfer_spans_periods_and_loops() {
        // 1 s at 1000 kbps, then 1 s at nothing, looping.
        let t = trace(&[(1000, 1000.0, 0.0), (1000, 0.0, 0.0)]);
        let mut n = NetworkModel::new(&t);
        // 2.5 Mbit: 1 s, idle 1 s, 1 s, idle 1 s, 0.5 s.
        let time = n.transfer(2_500_000.0);
        assert!((time - 4500.0).abs() < 1e-6, "{time}");
    }

    #[test]
    fn delay_and_at_agree() {
        let t = trace(&[(1000, 1000.0, 10.0), (2000, 500.0, 20.0)]);
        let mut a = NetworkModel::new(&t);
        a.delay(4500.0);
        let b = NetworkModel::at(&t, 4500.0);
        assert_eq!(a.current(), b.current());
        assert_eq!(b.current().bandwidth_kbps, 500.0);
        assert!((a.time_to_next - b.time_to_next).abs() < 1e-9);
    }

    #[test]
    fn abandon_check_sees_growing_progress_and_stops_the_download() {
        let t = trace(&[(100_000, 100.0, 50.0)]);
        let mut n = NetworkModel::new(&t);
        let mut seen = Vec::new();
        let mut check = |p: &DownloadProgress| {
            seen.push(p.downloaded_bits);
            (p.elapsed_ms > 1000.0).then_some(0)
        };
        let d = n.download(1_000_000.0, 3, Some(&mut check));
        assert_eq!(d.abandoned_to, Some(0));
        assert!(d.downloaded_bits < 1_000_000.0);
        assert!(seen.windows(2).all(|w| w[1] > w[0]));
        assert!((d.time_ms - (50.0 + d.downloaded_bits / 100.0)).abs() < 1e-6);
    }

    #[test]
    fn checked_download_without_abandon_matches_plain_download() {
        let t = trace(&[(700, 3000.0, 80.0), (1300, 800.0, 120.0), (400, 0.0, 90.0)]);
        let mut a = NetworkModel::new(&t);
        let mut b = NetworkModel::new(&t);
        let plain = a.download(4_000_000.0, 1, None);
        let mut never = |_: &DownloadProgress| None;
        let checked = b.download(4_000_000.0, 1, Some(&mut never));
        assert!((plain.time_ms - checked.time_ms).abs() < 1e-6);
        assert!((checked.downloaded_bits - 4_000_000.0).abs() < 1e-6);
    }
}
