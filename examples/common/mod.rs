//! Code shared by the examples (and by the root integration tests, which
//! include this directory with `#[path]`): the iris data and its split across
//! clients, the softmax-regression model and its Flower client, and small
//! support code (FedAvg settings, dev certificates, printing). Each example
//! uses a part of it, hence `dead_code` is allowed here.

#![allow(dead_code, unreachable_pub)]

pub mod data;
pub mod model;
pub mod support;
