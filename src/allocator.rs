//! The process's allocator: mimalloc, set to give freed memory back to the system at once.
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

use libmimalloc_sys::{mi_option_set, mi_option_t};

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_arena_eager_commit` in mimalloc 3's `mi_option_e` (libmimalloc-sys 0.1.49, pinned
/// in Cargo.toml): commit arena memory only as it is used.
const ARENA_EAGER_COMMIT: mi_option_t = 4;
/// `mi_option_purge_delay`: purge freed pages after this many milliseconds; 0 is at once.
const PURGE_DELAY: mi_option_t = 15;

/// Runs before `main` (and before the Rust runtime allocates), from the ELF `.init_array`:
/// the arena option is read when the first arena is reserved.
extern "C" fn set_options() {
    // SAFETY: mi_option_set only stores a value in mimalloc's option table.
    unsafe {
        mi_option_set(ARENA_EAGER_COMMIT, 0);
        mi_option_set(PURGE_DELAY, 0);
    }
}

#[used]
#[link_section = ".init_array"]
static SET_OPTIONS: extern "C" fn() = set_options;
