//! flower-server
