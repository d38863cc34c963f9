//! Checks that the byte ranges an image's structures and blocks occupy do
//! not overlap. Two blocks sharing bytes would read each other's data, and a
//! BAT pointing many blocks at one would let a tiny file describe an
//! unbounded allocation map; both are refused at open.

use crate::format::FormatError;

/// What occupies a range of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Owner {
    Structure(&'static str),
    Block(u64),
    BitmapBlock(u64),
}

impl std::fmt::Display for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Owner::Structure(s) => f.write_str(s),
            Owner::Block(i) => write!(f, "block {i}"),
            Owner::BitmapBlock(i) => write!(f, "sector bitmap block {i}"),
        }
    }
}

/// A range of the file and what occupies it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Span {
    pub(crate) start: u64,
    pub(crate) end: u64,
    pub(crate) owner: Owner,
}

/// Fails with a `Corrupt` error naming the first two overlapping spans;
/// `structure` names the table that placed them (for the error).
pub(crate) fn check_disjoint(mut spans: Vec<Span>, structure: &'static str) -> Result<(), FormatError> {
    spans.retain(|s| s.end > s.start);
    spans.sort_unstable_by_key(|s| (s.start, s.end));
    for w in spans.windows(2) {
        let (a, b) = (w[0], w[1]);
        if a.end > b.start {
            return Err(FormatError::corrupt(
                structure,
                b.start,
                format!(
                    "{} (bytes {}..{}) overlaps {} (bytes {}..{})",
                    b.owner, b.start, b.end, a.owner, a.start, a.end
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_overlapping_pair() {
        let s = |start, end, owner| Span { start, end, owner };
        let ok = vec![s(0, 10, Owner::Structure("header")), s(10, 20, Owner::Block(0)), s(30, 40, Owner::Block(1))];
        check_disjoint(ok, "BAT").unwrap();
        let bad = vec![s(30, 40, Owner::Block(1)), s(0, 10, Owner::Structure("header")), s(35, 36, Owner::Block(7))];
        let e = check_disjoint(bad, "BAT").unwrap_err();
        assert_eq!(e.offset(), Some(35));
        assert!(e.to_string().contains("block 7") && e.to_string().contains("block 1"), "{e}");
    }
}
