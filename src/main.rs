//! The crate compiles; the real CLI lives here.
fn main() {}
