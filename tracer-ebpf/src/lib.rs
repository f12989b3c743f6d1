//! Library target only so that `cargo` commands over the whole workspace (clippy, doc) see this
//! crate; the programs live in the `tracer` binary (`main.rs`).
#![no_std]
