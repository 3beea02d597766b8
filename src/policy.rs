//! Who may reach what: client identity × host × port, and which addresses are private.
pub mod host;
pub mod ip;
