//! The process's allocator: mimalloc, set to give freed memory back to the system soon after.
//!
//! A forwarded request allocates a handful of blocks of 2–5 KiB (its state machine, its read
//! buffer, its header map), past the sizes glibc serves from its per-thread cache: there each
//! costs several hundred instructions, and ~8 % of a request went to `malloc` and `free`.
//! mimalloc's per-thread free lists serve them in a few dozen (`benches/load/instructions.sh`:
//! 34 311 → 32 109 instructions a request).
//!
//! Left at its defaults, mimalloc commits its arenas eagerly and purges freed pages late (or,
//! with eager commit, never): the memory of a burst of connections stayed resident after they
//! closed, and an idle client connection measured 12 KiB instead of 3.5
//! (`cargo test --release --test memory_budget -- --ignored --nocapture measure`). Both are
//! set here, before `main` and before any allocation, so that resident memory follows what is
//! in use as it did with glibc. Under steady load this costs nothing measurable: 54 `madvise`
//! calls in 20 000 requests.
//!
//! Freed pages are purged 10 ms after they are freed (mimalloc's own default delay), not at
//! once: in a burst of new connections, pages freed by one request were given back and then
//! faulted in again by the next. With the delay, the first round of 9 750 requests to the
//! benchmark's 2 s origin took 17 % fewer page faults and ~10 % less CPU (median of five
//! interleaved rounds, `benches/load/RESULTS.md`); the per-connection figures of
//! `memory_budget`'s `measure` and the RSS a few seconds after that burst stayed as they were.

//!
//! The `mimalloc` crate's allocator asks for every block through `mi_malloc_aligned`, whose
//! path for blocks over 1 KiB (a request's state machine) tries an aligned fit first, then falls
//! back to a generic path. Like std's `System` allocator, this one asks plain `mi_malloc` when
//! the alignment is one every block has anyway: mimalloc rounds small sizes to two words and
//! keeps every size class a multiple of 16 bytes on 64-bit targets (`MI_MAX_ALIGN_SIZE`, the
//! `max_align_t` guarantee of C's `malloc`).

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys::{
    mi_free, mi_malloc, mi_malloc_aligned, mi_option_set, mi_option_t, mi_realloc,
    mi_realloc_aligned, mi_zalloc, mi_zalloc_aligned,
};

/// The alignment `mi_malloc` guarantees, as C's `malloc` does (`max_align_t`).
#[cfg(target_pointer_width = "64")]
const MIN_ALIGN: usize = 16;
#[cfg(not(target_pointer_width = "64"))]
const MIN_ALIGN: usize = 8;

/// mimalloc, called the way std's `System` allocator calls `malloc`.
pub struct Mimalloc;

/// Whether `mi_malloc(size)` already gives `align`: as in std's `System`, a block smaller than
/// its alignment goes the aligned way.
fn plain(align: usize, size: usize) -> bool {
    align <= MIN_ALIGN && align <= size
}

// SAFETY: every block comes from mimalloc and goes back to it through `mi_free`, which takes
// blocks from each of its allocation functions; alignment is either asked for or guaranteed.
unsafe impl GlobalAlloc for Mimalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if plain(layout.align(), layout.size()) {
            mi_malloc(layout.size()).cast()
        } else {
            mi_malloc_aligned(layout.size(), layout.align()).cast()
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if plain(layout.align(), layout.size()) {
            mi_zalloc(layout.size()).cast()
        } else {
            mi_zalloc_aligned(layout.size(), layout.align()).cast()
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        mi_free(ptr.cast::<c_void>());
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if plain(layout.align(), new_size) {
            mi_realloc(ptr.cast::<c_void>(), new_size).cast()
        } else {
            mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align()).cast()
        }
    }
}

#[global_allocator]
static ALLOC: Mimalloc = Mimalloc;

/// `mi_option_arena_eager_commit` in mimalloc 3's `mi_option_e` (libmimalloc-sys 0.1.49, pinned
/// in Cargo.toml): commit arena memory only as it is used.
const ARENA_EAGER_COMMIT: mi_option_t = 4;
/// `mi_option_purge_delay`: purge freed pages after this many milliseconds; 0 is at once.
const PURGE_DELAY: mi_option_t = 15;
/// How long freed pages stay before they are purged (see the module's documentation).
const PURGE_AFTER_MS: std::ffi::c_long = 10;

/// Runs before `main` (and before the Rust runtime allocates), from the ELF `.init_array`:
/// the arena option is read when the first arena is reserved.
extern "C" fn set_options() {
    // SAFETY: mi_option_set only stores a value in mimalloc's option table.
    unsafe {
        mi_option_set(ARENA_EAGER_COMMIT, 0);
        mi_option_set(PURGE_DELAY, PURGE_AFTER_MS);
    }
}

#[used]
#[link_section = ".init_array"]
static SET_OPTIONS: extern "C" fn() = set_options;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_have_the_alignment_asked_for() {
        // Every size class up to past the large-object limit, at every alignment up to a page:
        // plain `mi_malloc` must give MIN_ALIGN, the aligned calls the rest.
        let sizes = (1..=512)
            .chain((520..70_000).step_by(376))
            .chain([1 << 20, (1 << 22) + 8]);
        for size in sizes {
            for align in [1, 2, 4, 8, 16, 32, 64, 4096] {
                let layout = Layout::from_size_align(size, align).unwrap();
                // SAFETY: a non-zero size, a valid layout; each block is freed with it.
                unsafe {
                    let p = ALLOC.alloc(layout);
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0, "size {size} align {align}");
                    p.write_bytes(0xa5, size);
                    let q = ALLOC.realloc(p, layout, size * 2 + 1);
                    assert_eq!(q as usize % align, 0, "realloc: size {size} align {align}");
                    assert_eq!(*q.add(size - 1), 0xa5);
                    ALLOC.dealloc(q, Layout::from_size_align(size * 2 + 1, align).unwrap());
                    let z = ALLOC.alloc_zeroed(layout);
                    assert_eq!(z as usize % align, 0);
                    assert!((0..size).all(|i| *z.add(i) == 0));
                    ALLOC.dealloc(z, layout);
                }
            }
        }
    }
}
