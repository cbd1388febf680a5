//! Integration tests of the `flower-server` library: the round driver with
//! in-process clients (no sockets) and the `Server` builder.

mod builder;
mod driver;
mod metrics;
