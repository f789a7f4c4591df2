//! Test support shared by Herald's crates.

pub mod redis;
