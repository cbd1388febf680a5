//! flower-client
