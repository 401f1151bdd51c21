//! A writer of MaxMind DB files (format 2.0), so GeoIP lookups are tested against a real
//! database file read by the real reader: IPv4 networks mapped to `{country: {iso_code}}`, the
//! shape of GeoLite2-Country. Spec: https://maxmind.github.io/MaxMind-DB/

use std::collections::HashMap;
use std::net::Ipv4Addr;

const EMPTY: u32 = u32::MAX;
const DATA: u32 = u32::MAX - 1;

fn control(out: &mut Vec<u8>, kind: u8, size: usize) {
    // Sizes here stay below 29, the one-byte form.
    let size = u8::try_from(size.min(28)).unwrap_or(28);
    if kind <= 7 {
        out.push((kind << 5) | size);
    } else {
        out.push(size);
        out.push(kind - 7);
    }
}

fn string(out: &mut Vec<u8>, s: &str) {
    control(out, 2, s.len());
    out.extend_from_slice(s.as_bytes());
}

fn uint(out: &mut Vec<u8>, kind: u8, v: u64) {
    let bytes = v.to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count();
    control(out, kind, 8 - skip);
    out.extend_from_slice(&bytes[skip..]);
}

fn country_record(iso: &str) -> Vec<u8> {
    let mut out = Vec::new();
    control(&mut out, 7, 1);
    string(&mut out, "country");
    control(&mut out, 7, 1);
    string(&mut out, "iso_code");
    string(&mut out, iso);
    out
}

/// A country database mapping each `(network, prefix length, ISO code)`; other addresses
/// are not found.
pub fn country_db(networks: &[(Ipv4Addr, u8, &str)]) -> Vec<u8> {
    // The search tree: node i has a left (bit 0) and a right (bit 1) record.
    let mut nodes: Vec<[u32; 2]> = vec![[EMPTY, EMPTY]];
    let mut leaves: Vec<(usize, usize, String)> = Vec::new();
    for (net, prefix, iso) in networks {
        let bits = u32::from(*net);
        let prefix = usize::from((*prefix).clamp(1, 32));
        let mut node = 0usize;
        for depth in 0..prefix {
            let bit = ((bits >> (31 - depth)) & 1) as usize;
            if depth + 1 == prefix {
                nodes[node][bit] = DATA;
                leaves.push((node, bit, (*iso).to_owned()));
            } else {
                if nodes[node][bit] == EMPTY || nodes[node][bit] == DATA {
                    nodes.push([EMPTY, EMPTY]);
                    nodes[node][bit] = (nodes.len() - 1) as u32;
                }
                node = nodes[node][bit] as usize;
            }
        }
    }
    let node_count = nodes.len() as u32;
    let mut data = Vec::new();
    let mut offsets: HashMap<String, u32> = HashMap::new();
    for (_, _, iso) in &leaves {
        if !offsets.contains_key(iso) {
            offsets.insert(iso.clone(), data.len() as u32);
            data.extend(country_record(iso));
        }
    }
    for (node, bit, iso) in &leaves {
        nodes[*node][*bit] = node_count + 16 + offsets[iso];
    }
    let mut out = Vec::new();
    for n in &nodes {
        for r in n {
            let v = if *r == EMPTY { node_count } else { *r };
            out.extend_from_slice(&v.to_be_bytes()[1..]);
        }
    }
    out.extend_from_slice(&[0u8; 16]);
    out.extend(data);
    out.extend_from_slice(b"\xAB\xCD\xEFMaxMind.com");
    control(&mut out, 7, 9);
    string(&mut out, "binary_format_major_version");
    uint(&mut out, 5, 2);
    string(&mut out, "binary_format_minor_version");
    uint(&mut out, 5, 0);
    string(&mut out, "build_epoch");
    uint(&mut out, 9, 1_700_000_000);
    string(&mut out, "database_type");
    string(&mut out, "Mercato-Test-Country");
    string(&mut out, "description");
    control(&mut out, 7, 1);
    string(&mut out, "en");
    string(&mut out, "test countries");
    string(&mut out, "ip_version");
    uint(&mut out, 5, 4);
    string(&mut out, "languages");
    control(&mut out, 11, 1);
    string(&mut out, "en");
    string(&mut out, "node_count");
    uint(&mut out, 6, u64::from(node_count));
    string(&mut out, "record_size");
    uint(&mut out, 5, 24);
    out
}
