//! Read buffers parked per thread between requests, so that an idle connection holds none and
//! a busy one does not allocate a fresh one (and re-share it) for every request.
//!
//! A keep-alive connection gives its read buffer up while it waits for the next request (an
//! app's pool may keep thousands of them idle). Allocating a new one for each request cost
//! ~700 instructions: the 2 KiB allocation, and a second one when the first head split off it
//! turned it into a shared buffer. A buffer parked here is already shared and empty, and
//! nothing else holds a slice of it, so it is reused as is.

use std::cell::RefCell;

use bytes::BytesMut;

use super::HEAD_FIRST_READ;

/// Most buffers parked per thread: enough for the connections a worker serves at once, a
/// bounded amount of memory (`STASH_MAX × STASH_BUF_MAX`) when they all go idle.
const STASH_MAX: usize = 64;

/// Larger buffers (a long head grew them) are freed rather than parked.
const STASH_BUF_MAX: usize = 16 * 1024;

thread_local! {
    static STASH: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
}

/// A buffer for a connection that has none: a parked one, or a new one when none is.
pub fn take() -> BytesMut {
    STASH
        .try_with(|s| s.borrow_mut().pop())
        .ok()
        .flatten()
        .unwrap_or_default()
}

/// Give up `buf` (an idle connection's). It is parked only when it is empty, no other
/// handle shares its memory (a previous head's `Bytes` would), and it is not oversized;
/// otherwise it is simply dropped.
pub fn put(mut buf: BytesMut) {
    if !parkable(&mut buf) {
        return;
    }
    let _ = STASH.try_with(|s| {
        let mut s = s.borrow_mut();
        if s.len() < STASH_MAX {
            s.push(buf);
        }
    });
}

/// Whether `buf` may be handed to another connection: empty, not oversized, and able to take
/// a first read without allocating (which `try_reclaim` grants only to a buffer nothing else
/// shares, moving its start back to the beginning of its memory).
fn parkable(buf: &mut BytesMut) -> bool {
    buf.is_empty()
        && buf.capacity() <= STASH_BUF_MAX
        && buf.try_reclaim(HEAD_FIRST_READ)
        && buf.capacity() >= HEAD_FIRST_READ
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_parked_buffer_comes_back_without_a_new_allocation() {
        let mut buf = BytesMut::with_capacity(HEAD_FIRST_READ);
        buf.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        let head = buf.split_to(18).freeze();
        drop(head);
        let ptr = buf.as_ptr() as usize - 18;
        put(buf);
        let again = take();
        assert_eq!(
            again.as_ptr() as usize,
            ptr,
            "the same memory, from its start"
        );
        assert!(again.is_empty() && again.capacity() >= HEAD_FIRST_READ);
    }

    #[test]
    fn a_buffer_still_shared_or_holding_bytes_or_oversized_is_not_parked() {
        // Still shared: a head's bytes are alive.
        let mut buf = BytesMut::with_capacity(HEAD_FIRST_READ);
        buf.extend_from_slice(&[b'x'; HEAD_FIRST_READ]);
        let head = buf.split_to(HEAD_FIRST_READ).freeze();
        assert!(!parkable(&mut buf));
        assert_eq!(&head[..3], b"xxx", "the head's bytes are untouched");
        // Holding bytes: a pipelined request.
        let mut buf = BytesMut::with_capacity(HEAD_FIRST_READ);
        buf.extend_from_slice(b"G");
        assert!(!parkable(&mut buf));
        // Oversized.
        let mut buf = BytesMut::with_capacity(STASH_BUF_MAX + 1);
        assert!(!parkable(&mut buf));
        // Never allocated.
        assert!(!parkable(&mut BytesMut::new()));
    }

    #[test]
    fn the_stash_is_bounded() {
        let before = STASH.with(|s| s.borrow().len());
        for _ in 0..STASH_MAX + 10 {
            put(BytesMut::with_capacity(HEAD_FIRST_READ));
        }
        let parked = STASH.with(|s| s.borrow().len());
        assert_eq!(parked, STASH_MAX.max(before));
        STASH.with(|s| s.borrow_mut().clear());
    }
}
