//! Events of the flash_sales system (payload types; see the crate docs).
