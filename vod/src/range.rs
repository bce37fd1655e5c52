//! Single byte ranges (`Range: bytes=…`) resolved against an object's length.

/// An inclusive byte range within an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    pub start: u64,
    /// Inclusive.
    pub end: u64,
}

impl ByteRange {
    /// Number of bytes in the range.
    pub fn len(&self) -> u64 {
        self.end - self.start + 1
    }
    /// Never true: a resolved range holds at least one byte.
    pub fn is_empty(&self) -> bool {
        false
    }
    /// The `Content-Range` header value for an object of `total` bytes.
    pub fn content_range(&self, total: u64) -> String {
        format!("bytes {}-{}/{}", self.start, self.end, total)
    }
}

/// What to do with a request's Range header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeOutcome {
    /// No usable range: send the whole object with 200. Multi-range and
    /// syntactically invalid headers land here, as RFC 9110 allows.
    Full,
    /// Send this part with 206.
    Partial(ByteRange),
    /// No byte of the range exists: 416 with `Content-Range: bytes */len`.
    Unsatisfiable,
}

/// Resolves a `Range` header value against an object of `len` bytes.
pub fn resolve(header: Option<&str>, len: u64) -> RangeOutcome {
    let Some(h) = header else { return RangeOutcome::Full };
    let Some(spec) = h.trim().strip_prefix("bytes=") else { return RangeOutcome::Full };
    if spec.contains(',') {
        return RangeOutcome::Full;
    }
    let Some((a, b)) = spec.trim().split_once('-') else { return RangeOutcome::Full };
    let parse = |s: &str| -> Option<u64> {
        if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
            None
        } else {
            s.parse().ok()
        }
    };
    match (a.trim(), b.trim()) {
        ("", suffix) => match parse(suffix) {
            Some(0) => RangeOutcome::Unsatisfiable,
            Some(_) if len == 0 => RangeOutcome::Unsatisfiable,
            Some(n) => RangeOutcome::Partial(ByteRange { start: len.saturating_sub(n), end: len - 1 }),
            None => RangeOutcome::Full,
        },
        (start, "") => match parse(start) {
            Some(s) if s >= len => RangeOutcome::Unsatisfiable,
            Some(s) => RangeOutcome::Partial(ByteRange { start: s, end: len - 1 }),
            None => RangeOutcome::Full,
        },
        (start, end) => match (parse(start), parse(end)) {
            (Some(s), Some(e)) if s > e => RangeOutcome::Full,
            (Some(s), Some(_)) if s >= len => RangeOutcome::Unsatisfiable,
            (Some(s), Some(e)) => RangeOutcome::Partial(ByteRange { start: s, end: e.min(len - 1) }),
            _ => RangeOutcome::Full,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use RangeOutcome::*;

    fn p(start: u64, end: u64) -> RangeOutcome {
        Partial(ByteRange { start, end })
    }

    #[test]
    fn resolves_the_forms_of_rfc_9110() {
        assert_eq!(resolve(None, 100), Full);
        assert_eq!(resolve(Some("bytes=0-9"), 100), p(0, 9));
        assert_eq!(resolve(Some("bytes=90-"), 100), p(90, 99));
        assert_eq!(resolve(Some("bytes=-10"), 100), p(90, 99));
        assert_eq!(resolve(Some("bytes=-1000"), 100), p(0, 99));
        assert_eq!(resolve(Some("bytes=50-1000"), 100), p(50, 99));
        assert_eq!(resolve(Some("bytes=100-"), 100), Unsatisfiable);
        assert_eq!(resolve(Some("bytes=200-300"), 100), Unsatisfiable);
        assert_eq!(resolve(Some("bytes=-0"), 100), Unsatisfiable);
        assert_eq!(resolve(Some("bytes=0-"), 0), Unsatisfiable);
        assert_eq!(resolve(Some("bytes=5-1"), 100), Full);
        assert_eq!(resolve(Some("bytes=0-1,5-6"), 100), Full);
        assert_eq!(resolve(Some("items=0-1"), 100), Full);
        assert_eq!(resolve(Some("bytes=x-1"), 100), Full);
        assert_eq!(p(90, 99), resolve(Some("bytes=90-99"), 100));
        assert_eq!(ByteRange { start: 90, end: 99 }.content_range(100), "bytes 90-99/100");
    }
}
