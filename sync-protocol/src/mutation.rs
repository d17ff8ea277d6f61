//! Byte mutations for the fuzz harnesses (this crate's tests and the
//! server's): what a changed or lost byte, an extra one, or an input cut
//! short does to bytes from the network or the disk. Not used by the
//! protocol itself.

/// One change to a byte string; positions wrap around its length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mutation {
    Set(usize, u8),
    FlipBit(usize, u8),
    Insert(usize, u8),
    Remove(usize),
    Truncate(usize),
}

/// Applies `mutations` in order.
pub fn mutate(bytes: &mut Vec<u8>, mutations: &[Mutation]) {
    for m in mutations {
        let len = bytes.len();
        match *m {
            Mutation::Set(i, b) if len > 0 => bytes[i % len] = b,
            Mutation::FlipBit(i, bit) if len > 0 => bytes[i % len] ^= 1 << (bit % 8),
            Mutation::Insert(i, b) => bytes.insert(i % (len + 1), b),
            Mutation::Remove(i) if len > 0 => {
                bytes.remove(i % len);
            }
            Mutation::Truncate(i) => bytes.truncate(i % (len + 1)),
            _ => {}
        }
    }
}
