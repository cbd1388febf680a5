//! Flower's Fleet API for stock SuperNodes (flwr 1.42's protobuf over
//! HTTP/1.1), as a [`flower_server::Transport`].
#![forbid(unsafe_code)]

mod convert;
mod error;
mod outgoing;
pub mod state;

pub use convert::{ContentOptions, MessageFormat};
pub use error::FleetError;
