//! How the client spelled its header names, kept so they can go upstream the same way.

use bytes::Bytes;
use smallvec::SmallVec;

/// The original spelling of every header name the client did not send in lower case, as
/// spans of the head it came in (the head is kept alive by the header values anyway).
#[derive(Debug, Clone, Default)]
pub struct Spellings {
    head: Bytes,
    /// (start, length) of each such name in `head`, in the order received; inline for the
    /// usual dozen, so recording and handing them on allocates nothing.
    spans: SmallVec<[(u32, u16); 12]>,
}

impl Spellings {
    /// Spellings recorded from `head`.
    pub(super) fn new(head: Bytes) -> Self {
        Spellings {
            head,
            spans: SmallVec::new(),
        }
    }

    /// Notes `name`, a slice of the head, if it has any upper-case letter.
    pub(super) fn note(&mut self, name: &[u8]) {
        if !name.iter().any(u8::is_ascii_uppercase) {
            return;
        }
        let start = name.as_ptr() as usize - self.head.as_ptr() as usize;
        if let (Ok(start), Ok(len)) = (u32::try_from(start), u16::try_from(name.len())) {
            self.spans.push((start, len));
        }
    }

    /// Whether every name was sent in lower case (nothing to restore).
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// The client's spelling of the header `name` (any case), if it was not lower case. The
    /// first spelling wins when a name came several times, spelled differently.
    pub fn of(&self, name: &[u8]) -> Option<&[u8]> {
        self.find(name).and_then(|i| self.spelling(i))
    }

    /// The index of the client's spelling of `name`, for [`Spellings::spelling`].
    pub fn find(&self, name: &[u8]) -> Option<usize> {
        self.spans.iter().position(|&(start, len)| {
            usize::from(len) == name.len() && {
                let start = start as usize;
                self.head
                    .get(start..start + name.len())
                    .is_some_and(|spelled| spelled.eq_ignore_ascii_case(name))
            }
        })
    }

    /// The spelling at `index`.
    pub fn spelling(&self, index: usize) -> Option<&[u8]> {
        let (start, len) = *self.spans.get(index)?;
        let start = start as usize;
        self.head.get(start..start + usize::from(len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_names_with_capitals_are_kept_and_found_in_any_case() {
        let head = Bytes::from_static(
            b"GET / HTTP/1.1\r\nHost: a\r\nx-lower: 1\r\nX-Api-KEY: 2\r\nx-api-key: 3\r\n\r\n",
        );
        let mut s = Spellings::new(head.clone());
        for name in [&head[16..20], &head[25..32], &head[37..46], &head[51..60]] {
            s.note(name);
        }
        assert_eq!(s.of(b"host"), Some(&b"Host"[..]));
        assert_eq!(
            s.of(b"x-api-key"),
            Some(&b"X-Api-KEY"[..]),
            "first spelling wins"
        );
        assert_eq!(
            s.of(b"x-lower"),
            None,
            "sent in lower case: nothing to restore"
        );
        assert_eq!(s.of(b"via"), None);
        assert!(!s.is_empty());
        assert!(Spellings::default().is_empty());
    }
}
