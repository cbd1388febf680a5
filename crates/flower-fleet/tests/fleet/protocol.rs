//! The Fleet API spoken by a Rust HTTP client: hostile inputs get only the
//! statuses a SuperNode survives, and the server never panics.
