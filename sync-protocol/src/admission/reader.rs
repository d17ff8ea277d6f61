//! Cursors over untrusted bytes.
//!
//! Two LEB128 dialects, because Automerge has two: the chunk and sync message
//! parsers (`storage::parse::leb128`) refuse overlong encodings, while column
//! data is read with the `leb128` crate (and hexane, in the same format),
//! which accepts them. Reading a dialect more leniently than Automerge would
//! admit bytes Automerge then refuses, which is harmless; reading it more
//! strictly would refuse what stock clients send, so each reader mirrors its
//! counterpart.

use super::AdmissionError;

pub(super) fn malformed(what: impl std::fmt::Display) -> AdmissionError {
    AdmissionError::Malformed(what.to_string())
}

/// Chunk- and message-level bytes: Automerge's strict parser.
#[derive(Debug, Clone, Copy)]
pub(super) struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(super) fn new(data: &'a [u8]) -> Self {
        Reader { data }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub(super) fn remaining(&self) -> usize {
        self.data.len()
    }

    pub(super) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.data)
    }

    pub(super) fn byte(&mut self, what: &str) -> Result<u8, AdmissionError> {
        let (&first, rest) = self
            .data
            .split_first()
            .ok_or_else(|| malformed(format_args!("{what}: not enough input")))?;
        self.data = rest;
        Ok(first)
    }

    /// `n` bytes, refused before anything is allocated when the input is shorter.
    pub(super) fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8], AdmissionError> {
        let n = usize::try_from(n)
            .ok()
            .filter(|n| *n <= self.data.len())
            .ok_or_else(|| {
                malformed(format_args!(
                    "{what}: declares {n} bytes, {} remain",
                    self.data.len()
                ))
            })?;
        let (head, tail) = self.data.split_at(n);
        self.data = tail;
        Ok(head)
    }

    pub(super) fn hash(&mut self, what: &str) -> Result<automerge::ChangeHash, AdmissionError> {
        let bytes = self.take(32, what)?;
        let array: [u8; 32] = bytes
            .try_into()
            .map_err(|_| malformed(format_args!("{what}: short hash")))?;
        Ok(automerge::ChangeHash(array))
    }

    /// A count of fixed-size items, checked against the input left before
    /// the caller reserves anything for it.
    pub(super) fn count(&mut self, item_size: u64, what: &str) -> Result<u64, AdmissionError> {
        let count = self.uleb(what)?;
        let fits = count
            .checked_mul(item_size)
            .is_some_and(|bytes| bytes <= self.data.len() as u64);
        if fits {
            Ok(count)
        } else {
            Err(malformed(format_args!(
                "{what}: declares {count} items of at least {item_size} bytes, {} bytes remain",
                self.data.len()
            )))
        }
    }

    pub(super) fn length_prefixed(&mut self, what: &str) -> Result<&'a [u8], AdmissionError> {
        let len = self.uleb(what)?;
        self.take(len, what)
    }

    /// `storage::parse::leb128_u64`: at most 64 bits, no redundant zero byte.
    pub(super) fn uleb(&mut self, what: &str) -> Result<u64, AdmissionError> {
        let mut result: u64 = 0;
        let mut shift: u32 = 0;
        loop {
            let byte = self.byte(what)?;
            if shift < 64 {
                result |= u64::from(byte & 0x7f) << shift;
            }
            shift += 7;
            if byte & 0x80 == 0 {
                if shift > 64 && byte > 1 {
                    return Err(malformed(format_args!("{what}: LEB128 over 64 bits")));
                }
                if shift > 7 && byte == 0 {
                    return Err(malformed(format_args!("{what}: overlong LEB128")));
                }
                return Ok(result);
            }
            if shift > 64 {
                return Err(malformed(format_args!("{what}: LEB128 over 64 bits")));
            }
        }
    }

    /// `storage::parse::leb128_u32`, which errors rather than truncates.
    pub(super) fn uleb_u32(&mut self, what: &str) -> Result<u32, AdmissionError> {
        let value = self.uleb(what)?;
        u32::try_from(value)
            .map_err(|_| malformed(format_args!("{what}: {value} does not fit 32 bits")))
    }

    /// `storage::parse::leb128_i64`.
    pub(super) fn sleb(&mut self, what: &str) -> Result<i64, AdmissionError> {
        let mut result: i64 = 0;
        let mut shift: u32 = 0;
        let mut prev: u8 = 0;
        loop {
            let byte = self.byte(what)?;
            if shift < 64 {
                result |= i64::from(byte & 0x7f) << shift;
            }
            shift += 7;
            if byte & 0x80 == 0 {
                if shift > 64 && byte != 0 && byte != 0x7f {
                    return Err(malformed(format_args!("{what}: LEB128 over 64 bits")));
                }
                if shift > 7
                    && ((byte == 0 && prev & 0x40 == 0) || (byte == 0x7f && prev & 0x40 != 0))
                {
                    return Err(malformed(format_args!("{what}: overlong LEB128")));
                }
                if shift < 64 && byte & 0x40 != 0 {
                    result |= -1_i64 << shift;
                }
                return Ok(result);
            }
            if shift > 64 {
                return Err(malformed(format_args!("{what}: LEB128 over 64 bits")));
            }
            prev = byte;
        }
    }
}

/// Column data: the `leb128` crate's reader, which allows overlong encodings
/// but nothing past 64 bits.
#[derive(Debug, Clone)]
pub(super) struct ColumnReader<'a> {
    data: &'a [u8],
    what: &'static str,
}

impl<'a> ColumnReader<'a> {
    pub(super) fn new(data: &'a [u8], what: &'static str) -> Self {
        ColumnReader { data, what }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub(super) fn remaining(&self) -> usize {
        self.data.len()
    }

    pub(super) fn what(&self) -> &'static str {
        self.what
    }

    fn byte(&mut self) -> Result<u8, AdmissionError> {
        let (&first, rest) = self
            .data
            .split_first()
            .ok_or_else(|| malformed(format_args!("{} column: truncated value", self.what)))?;
        self.data = rest;
        Ok(first)
    }

    pub(super) fn uleb(&mut self) -> Result<u64, AdmissionError> {
        let mut result: u64 = 0;
        let mut shift: u32 = 0;
        loop {
            let byte = self.byte()?;
            if shift == 63 && byte > 1 {
                return Err(malformed(format_args!(
                    "{} column: LEB128 over 64 bits",
                    self.what
                )));
            }
            result |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(result);
            }
            shift += 7;
        }
    }

    pub(super) fn sleb(&mut self) -> Result<i64, AdmissionError> {
        let mut result: i64 = 0;
        let mut shift: u32 = 0;
        loop {
            let byte = self.byte()?;
            if shift == 63 && byte != 0 && byte != 0x7f {
                return Err(malformed(format_args!(
                    "{} column: LEB128 over 64 bits",
                    self.what
                )));
            }
            result |= i64::from(byte & 0x7f) << shift;
            shift += 7;
            if byte & 0x80 == 0 {
                if shift < 64 && byte & 0x40 != 0 {
                    result |= -1_i64 << shift;
                }
                return Ok(result);
            }
        }
    }

    pub(super) fn skip(&mut self, n: u64) -> Result<(), AdmissionError> {
        let n = usize::try_from(n)
            .ok()
            .filter(|n| *n <= self.data.len())
            .ok_or_else(|| {
                malformed(format_args!(
                    "{} column: value of {n} bytes, {} remain",
                    self.what,
                    self.data.len()
                ))
            })?;
        self.data = self.data.get(n..).unwrap_or_default();
        Ok(())
    }
}

#[cfg(test)]
pub(super) fn write_uleb(out: &mut Vec<u8>, mut value: u64) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

#[cfg(test)]
pub(super) fn write_sleb(out: &mut Vec<u8>, mut value: i64) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        let done = (value == 0 && byte & 0x40 == 0) || (value == -1 && byte & 0x40 != 0);
        if done {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}
