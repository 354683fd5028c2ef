//! TCP sequence numbers: arithmetic modulo 2^32, compared with RFC 1982-style serial arithmetic.
//!
//! Unlike smoltcp's `TcpSeqNumber`, nothing here panics: peers choose these values, so every
//! operation is total (differences are signed and wrap).

use std::cmp::Ordering;
use std::fmt;

/// A TCP sequence (or acknowledgement) number.
///
/// `a < b` means `b` is ahead of `a` by less than 2^31 (RFC 9293 section 3.4: "the comparison
/// ... must use modulo 2**32 arithmetic"). Values exactly 2^31 apart are unordered: `partial_cmp`
/// returns `None` and both `<` and `>` are false.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SeqNumber(pub u32);

impl SeqNumber {
    /// Signed distance from `other` to `self` (positive when `self` is ahead).
    #[inline]
    pub fn diff(self, other: SeqNumber) -> i32 {
        // Reinterpreting the wrapped difference as signed is the definition of serial distance.
        i32::from_ne_bytes(self.0.wrapping_sub(other.0).to_ne_bytes())
    }

    /// Unsigned distance from `other` up to `self`, or `None` if `self` is behind `other`.
    #[inline]
    pub fn since(self, other: SeqNumber) -> Option<u32> {
        u32::try_from(self.diff(other)).ok()
    }

    /// The later of the two.
    #[inline]
    #[must_use]
    pub fn max_seq(self, other: SeqNumber) -> SeqNumber {
        if self.diff(other) >= 0 {
            self
        } else {
            other
        }
    }

    /// The earlier of the two.
    #[inline]
    #[must_use]
    pub fn min_seq(self, other: SeqNumber) -> SeqNumber {
        if self.diff(other) <= 0 {
            self
        } else {
            other
        }
    }

    /// Whether `self` lies in `[start, end)` (modulo 2^32).
    #[inline]
    pub fn in_range(self, start: SeqNumber, end: SeqNumber) -> bool {
        self.0.wrapping_sub(start.0) < end.0.wrapping_sub(start.0)
    }
}

impl std::ops::Add<u32> for SeqNumber {
    type Output = SeqNumber;

    /// `self + n` modulo 2^32.
    #[inline]
    fn add(self, n: u32) -> SeqNumber {
        SeqNumber(self.0.wrapping_add(n))
    }
}

impl std::ops::Sub<u32> for SeqNumber {
    type Output = SeqNumber;

    /// `self - n` modulo 2^32.
    #[inline]
    fn sub(self, n: u32) -> SeqNumber {
        SeqNumber(self.0.wrapping_sub(n))
    }
}

impl std::ops::AddAssign<u32> for SeqNumber {
    #[inline]
    fn add_assign(&mut self, n: u32) {
        self.0 = self.0.wrapping_add(n);
    }
}

impl PartialOrd for SeqNumber {
    fn partial_cmp(&self, other: &SeqNumber) -> Option<Ordering> {
        match self.diff(*other) {
            0 => Some(Ordering::Equal),
            i32::MIN => None,
            d if d > 0 => Some(Ordering::Greater),
            _ => Some(Ordering::Less),
        }
    }
}

impl fmt::Debug for SeqNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Seq({})", self.0)
    }
}

impl fmt::Display for SeqNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::SeqNumber as S;

    #[test]
    fn wrapping_order() {
        assert!(S(1) > S(0));
        assert!(S(0) > S(u32::MAX), "0 follows 2^32-1");
        assert!(S(5) < S(5u32.wrapping_add(1 << 30)));
        assert_eq!(S(10).diff(S(u32::MAX - 5)), 16);
        assert_eq!(S(u32::MAX - 5).diff(S(10)), -16);
        assert_eq!(S(3).since(S(u32::MAX)), Some(4));
        assert_eq!(S(u32::MAX).since(S(3)), None);
        assert_eq!(S(u32::MAX) + 2, S(1));
        assert_eq!(S(1) - 2, S(u32::MAX));
        assert_eq!(S(u32::MAX).max_seq(S(1)), S(1));
        assert_eq!(S(u32::MAX).min_seq(S(1)), S(u32::MAX));
    }

    #[test]
    fn half_space_apart_is_unordered() {
        let (a, b) = (S(0), S(1 << 31));
        assert_eq!(a.partial_cmp(&b), None);
        assert!(a.partial_cmp(&b).is_none() && b.partial_cmp(&a).is_none() && a != b);
        assert!(a.lt(&b) == a.gt(&b), "neither is less nor greater");
    }

    #[test]
    fn in_range_wraps() {
        assert!(S(u32::MAX).in_range(S(u32::MAX - 1), S(3)));
        assert!(S(2).in_range(S(u32::MAX - 1), S(3)));
        assert!(!S(3).in_range(S(u32::MAX - 1), S(3)));
        assert!(!S(7).in_range(S(7), S(7)), "empty range");
    }
}
