//! Code shared by the examples (and by the root integration tests, which
//! include this directory with `#[path]`): the iris data and its split across
//! clients, the softmax-regression model and its Flower client, and an
//! in-process flower-rs server.

#![allow(dead_code, unreachable_pub)]

pub mod data;
pub mod federation;
pub mod model;
