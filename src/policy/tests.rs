//! Policy decision tests: identities, host and port rules.
