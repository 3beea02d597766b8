//! Config file: serde structs, defaults, validation.
