//! flower-strategy
