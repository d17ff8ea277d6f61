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

/// A small deterministic generator (xorshift64) for the harnesses that pick
/// their own schedules: a seed names the whole run, so a failing seed,
/// printed, replays.
#[derive(Debug, Clone)]
pub struct Seeded(u64);

impl Seeded {
    /// Any seed; zero (xorshift's one fixed point) is taken as one.
    pub fn new(seed: u64) -> Seeded {
        Seeded(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// True `percent` times in a hundred.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    /// One to five mutations at random places.
    pub fn mutations(&mut self) -> Vec<Mutation> {
        (0..=self.below(4))
            .map(|_| {
                let at = usize::try_from(self.next_u64() >> 1).unwrap_or(usize::MAX);
                let byte = self.next_u64().to_le_bytes()[0];
                match self.below(5) {
                    0 => Mutation::Set(at, byte),
                    1 => Mutation::FlipBit(at, byte),
                    2 => Mutation::Insert(at, byte),
                    3 => Mutation::Remove(at),
                    _ => Mutation::Truncate(at),
                }
            })
            .collect()
    }
}
