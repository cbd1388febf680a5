//! flower-rs facade.
