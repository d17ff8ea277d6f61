//! DEFLATE with a ceiling on what it may produce.
//!
//! Automerge inflates with `read_to_end`, so a few kilobytes can ask it for
//! gigabytes. Here every inflated byte is charged to one budget for the whole
//! message before it is kept, and the output buffer never grows past what
//! the budget still allows, so the bytes held at any time stay within the
//! cap plus one read buffer.

use std::io::Read;

use super::AdmissionError;
use super::reader::malformed;

/// Bytes read from the inflater at a time: the "small buffer" on top of the cap.
pub(super) const READ_BUFFER: usize = 16 * 1024;

/// The uncompressed bytes of a whole message, against its limit.
#[derive(Debug, Clone, Copy)]
pub(super) struct Budget {
    used: u64,
    limit: u64,
}

impl Budget {
    pub(super) fn new(limit: u64) -> Self {
        Budget { used: 0, limit }
    }

    pub(super) fn used(&self) -> u64 {
        self.used
    }

    pub(super) fn charge(&mut self, bytes: u64) -> Result<(), AdmissionError> {
        self.used = self.used.saturating_add(bytes);
        if self.used > self.limit {
            Err(AdmissionError::OverLimit {
                what: "inflated bytes",
                size: self.used,
                limit: self.limit,
            })
        } else {
            Ok(())
        }
    }

    fn headroom(&self) -> u64 {
        self.limit.saturating_sub(self.used)
    }
}

#[cfg(test)]
thread_local! {
    /// The most bytes this thread's inflater held at once: bytes charged
    /// before the current output plus that output's capacity.
    pub(super) static PEAK_HELD: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Inflate raw DEFLATE (`flate2::bufread::DeflateDecoder`, as Automerge
/// uses), charging every byte produced to `budget`.
pub(super) fn inflate(
    compressed: &[u8],
    budget: &mut Budget,
    what: &str,
) -> Result<Vec<u8>, AdmissionError> {
    #[cfg(test)]
    let before = budget.used();
    let mut decoder = flate2::bufread::DeflateDecoder::new(compressed);
    let mut out: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; READ_BUFFER];
    loop {
        let n = decoder
            .read(&mut buf)
            .map_err(|e| malformed(format_args!("{what}: does not inflate: {e}")))?;
        if n == 0 {
            break;
        }
        budget.charge(n as u64)?;
        let chunk = buf.get(..n).unwrap_or_default();
        if out.capacity() - out.len() < n {
            // Double as usual, but never past what the budget still allows.
            let allowed = out.len() as u64 + n as u64 + budget.headroom();
            let wanted = (out.len().saturating_mul(2))
                .max(out.len() + n)
                .max(READ_BUFFER) as u64;
            let target = wanted.min(allowed);
            let extra = usize::try_from(target)
                .unwrap_or(usize::MAX)
                .saturating_sub(out.len());
            out.reserve_exact(extra);
        }
        out.extend_from_slice(chunk);
        #[cfg(test)]
        PEAK_HELD.with(|peak| {
            let held = before.saturating_add(out.capacity() as u64);
            peak.set(peak.get().max(held));
        });
    }
    out.shrink_to_fit();
    Ok(out)
}
