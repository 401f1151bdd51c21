//! Events of the links system (payload types; see the crate docs).
