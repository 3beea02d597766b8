//! Client-side HTTP/1.0 and 1.1 codec: strict request heads, request bodies, our responses.
//!
//! Apps talk to the proxy through this module, not through hyper's server:
//! every malformed or ambiguous input must reach *our* error mapping (400 or
//! 431 with `Proxy-Status`). It depends on no other portcullis module.
#![warn(missing_docs)]

pub mod write;

pub use write::{encode_chunk, encode_response_head, encode_simple_response, CONTINUE, LAST_CHUNK};

/// RFC 9110 `tchar`: the bytes allowed in a method or header name.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'!' | b'#'
                | b'$'
                | b'%'
                | b'&'
                | b'\''
                | b'*'
                | b'+'
                | b'-'
                | b'.'
                | b'^'
                | b'_'
                | b'`'
                | b'|'
                | b'~'
        )
}
