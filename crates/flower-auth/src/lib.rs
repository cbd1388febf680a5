//! flower-auth
