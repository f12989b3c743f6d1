//! Tests of the unwind tables and the reference unwinder.
//!
//! - `synthetic`: hand-built CFI in minimal ELF files, one case per row kind.
//! - `real`: a gcc-built fixture and the system libc, checked row by row against
//!   `readelf --debug-dump=frames-interp`.
//! - `reference`: the reference unwinder on fake stacks.
//! - `self_unwind`: this test process unwinds its own stack from tables compiled from
//!   `/proc/self/exe` and libc, and symbolizes the frames.
mod elf_builder;
mod readelf;
mod real;
mod reference;
mod self_unwind;
mod synthetic;
