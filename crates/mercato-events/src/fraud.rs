//! Events of the fraud system (payload types; see the crate docs).
