//! The off-peak window prefill runs in (`02:00-10:00`, local time; may wrap
//! midnight) and the clock that says what time it is, injected so tests
//! control it.

use std::sync::Arc;
use std::time::Duration;

/// Seconds since local midnight.
pub type LocalClock = Arc<dyn Fn() -> u32 + Send + Sync>;

/// The machine's local time of day.
pub fn system_clock() -> LocalClock {
    Arc::new(local_seconds_of_day)
}

fn local_seconds_of_day() -> u32 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let t = now as libc::time_t;
    // SAFETY: localtime_r writes only into `tm`, which lives on this stack frame.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    let ok = unsafe { !libc::localtime_r(&t, &mut tm).is_null() };
    if ok {
        (tm.tm_hour * 3600 + tm.tm_min * 60 + tm.tm_sec).clamp(0, 86_399) as u32
    } else {
        (now % 86_400) as u32
    }
}

/// A daily window `[start, end)` in seconds of the local day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrefillWindow {
    start: u32,
    end: u32,
}

impl PrefillWindow {
    /// Parses `HH:MM-HH:MM` (24 h). Equal ends mean all day.
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = || format!("prefill window {text:?}: expected HH:MM-HH:MM, e.g. 02:00-10:00");
        let (a, b) = text.trim().split_once('-').ok_or_else(bad)?;
        let hm = |s: &str| -> Result<u32, String> {
            let (h, m) = s.trim().split_once(':').ok_or_else(bad)?;
            let (h, m): (u32, u32) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
            if h > 23 || m > 59 {
                return Err(bad());
            }
            Ok(h * 3600 + m * 60)
        };
        Ok(Self { start: hm(a)?, end: hm(b)? })
    }

    /// Whether `seconds` of the local day fall inside the window.
    pub fn contains(&self, seconds: u32) -> bool {
        match self.start.cmp(&self.end) {
            std::cmp::Ordering::Equal => true,
            std::cmp::Ordering::Less => (self.start..self.end).contains(&seconds),
            std::cmp::Ordering::Greater => seconds >= self.start || seconds < self.end,
        }
    }

    /// How long from `seconds` until the window opens (zero inside it).
    pub fn until_open(&self, seconds: u32) -> Duration {
        if self.contains(seconds) {
            return Duration::ZERO;
        }
        let s = seconds % 86_400;
        Duration::from_secs(u64::from((self.start + 86_400 - s) % 86_400))
    }
}

impl std::fmt::Display for PrefillWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hm = |s: u32| format!("{:02}:{:02}", s / 3600, s / 60 % 60);
        write!(f, "{}-{}", hm(self.start), hm(self.end))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_parse_wrap_midnight_and_say_when_they_open() {
        let w = PrefillWindow::parse("02:00-10:00").unwrap();
        assert_eq!(w.to_string(), "02:00-10:00");
        assert!(w.contains(2 * 3600) && w.contains(9 * 3600 + 3599));
        assert!(!w.contains(10 * 3600) && !w.contains(3600));
        assert_eq!(w.until_open(3600), Duration::from_secs(3600));
        assert_eq!(w.until_open(23 * 3600), Duration::from_secs(3 * 3600));
        assert_eq!(w.until_open(5 * 3600), Duration::ZERO);
        let night = PrefillWindow::parse("22:30-04:00").unwrap();
        assert!(night.contains(23 * 3600) && night.contains(3600) && !night.contains(12 * 3600));
        assert!(PrefillWindow::parse("00:00-00:00").unwrap().contains(12345));
        for bad in ["", "2-10", "02:00", "25:00-01:00", "02:60-03:00", "aa:bb-cc:dd"] {
            assert!(PrefillWindow::parse(bad).unwrap_err().contains("HH:MM-HH:MM"), "{bad}");
        }
    }

    #[test]
    fn the_system_clock_reads_a_time_of_day() {
        assert!(system_clock()() < 86_400);
    }
}
