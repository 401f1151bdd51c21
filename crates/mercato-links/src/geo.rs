//! Click countries from a MaxMind-format database (GeoLite2-Country, GeoIP2-Country or City),
//! read into memory at start and looked up per redirect (microseconds, no I/O); the address
//! itself is never stored.

use anyhow::Context as _;
use std::net::IpAddr;

/// An open country database.
pub struct GeoIp {
    reader: maxminddb::Reader<Vec<u8>>,
}

impl std::fmt::Debug for GeoIp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeoIp")
            .field("database_type", &self.reader.metadata().database_type)
            .finish()
    }
}

impl GeoIp {
    /// Opens the database at `path` (a missing or corrupt file fails the start: a configured
    /// database that silently does nothing would leave every country unknown).
    pub fn open(path: &str) -> anyhow::Result<GeoIp> {
        let reader = maxminddb::Reader::open_readfile(path)
            .with_context(|| format!("opening the GeoIP database {path} (links_geoip_db)"))?;
        Ok(GeoIp { reader })
    }

    /// The ISO 3166 alpha-2 country of `ip`, if the database knows it.
    pub fn country(&self, ip: IpAddr) -> Option<String> {
        let found = self.reader.lookup(ip).ok()?;
        let c: maxminddb::geoip2::Country<'_> = found.decode().ok()??;
        c.country
            .iso_code
            .filter(|code| code.len() == 2 && code.bytes().all(|b| b.is_ascii_alphabetic()))
            .map(|code| code.to_ascii_uppercase())
    }
}
