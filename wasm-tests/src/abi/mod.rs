//! The byte-level side of the ABI: bounded guest memory access and map serialisation.

pub(crate) mod memory;
pub(crate) mod pairs;
