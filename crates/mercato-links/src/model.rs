//! Pure rules of short links: codes and slugs, destination URLs (validation, loops, UTM merge),
//! and what a click says about its visitor (browser, OS, device, bot, referrer domain).

use rand::Rng as _;
use serde::{Deserialize, Serialize};

/// Characters of generated codes.
const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
/// Length of generated codes: 62^7 ≈ 3.5e12, so collisions are rare and retried.
pub const CODE_LEN: usize = 7;
/// Longest destination URL accepted.
pub const MAX_URL_LEN: usize = 2048;

/// First path segments the rest of the HTTP surface uses (API, operations, storefront,
/// console): a custom slug may not take them, or it would shadow (or be shadowed by) a route.
/// A test checks every first segment of the router is here.
pub const RESERVED: &[&str] = &[
    "api",
    "healthz",
    "readyz",
    "metrics",
    "admin",
    "static",
    "assets",
    "console",
    "shop",
    "store",
    "storefront",
    "products",
    "cart",
    "carts",
    "checkout",
    "checkouts",
    "orders",
    "account",
    "login",
    "logout",
    "register",
    "auth",
    "me",
    "search",
    "links",
    "media",
    "live",
    "webhooks",
    "favicon.ico",
    "robots.txt",
    "sitemap.xml",
    "well-known",
    ".well-known",
];

/// A fresh random code: 7 base62 characters from the OS CSPRNG.
pub fn generate_code() -> String {
    let mut rng = rand::rngs::OsRng;
    (0..CODE_LEN)
        .map(|_| BASE62[rng.gen_range(0..BASE62.len())] as char)
        .collect()
}

/// Why a custom slug is refused.
#[derive(Debug, PartialEq, Eq)]
pub enum SlugError {
    Shape,
    Reserved,
}

/// Checks a custom slug: 3–64 of `[A-Za-z0-9_-]`, not a reserved word (compared without case,
/// so `API` cannot shadow `/api` for a case-insensitive proxy either).
pub fn check_slug(slug: &str) -> Result<(), SlugError> {
    if !(3..=64).contains(&slug.len()) || !slug.bytes().all(is_code_byte) {
        return Err(SlugError::Shape);
    }
    if RESERVED.iter().any(|r| r.eq_ignore_ascii_case(slug)) {
        return Err(SlugError::Reserved);
    }
    Ok(())
}

fn is_code_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

/// Whether a path segment could be a code at all (so garbage never reaches the cache).
pub fn could_be_code(s: &str) -> bool {
    (3..=64).contains(&s.len()) && s.bytes().all(is_code_byte)
}

/// UTM parameters merged into the destination's query.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Utm {
    #[schema(max_length = 200)]
    pub source: Option<String>,
    #[schema(max_length = 200)]
    pub medium: Option<String>,
    #[schema(max_length = 200)]
    pub campaign: Option<String>,
    #[schema(max_length = 200)]
    pub term: Option<String>,
    #[schema(max_length = 200)]
    pub content: Option<String>,
}

impl Utm {
    fn pairs(&self) -> Vec<(&'static str, &str)> {
        [
            ("utm_source", &self.source),
            ("utm_medium", &self.medium),
            ("utm_campaign", &self.campaign),
            ("utm_term", &self.term),
            ("utm_content", &self.content),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.as_deref().filter(|v| !v.is_empty()).map(|v| (k, v)))
        .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.pairs().is_empty()
    }
}

/// Why a destination URL is refused.
#[derive(Debug, PartialEq, Eq)]
pub enum UrlError {
    TooLong,
    NotAbsoluteHttp,
    Loop,
}

impl UrlError {
    pub fn message(&self) -> &'static str {
        match self {
            UrlError::TooLong => "the URL is longer than 2048 characters",
            UrlError::NotAbsoluteHttp => "the URL must be an absolute http or https URL",
            UrlError::Loop => "the URL points at this server's own short links",
        }
    }
}

/// The hosts a destination is compared with.
#[derive(Clone, Debug, Default)]
pub struct Hosts {
    /// Dedicated short-link hosts (`links_host`, `links_addr`): every path there is a code, so
    /// any URL on them is a loop.
    pub short: Vec<String>,
    /// The shop's own hosts (the main listener, which also serves short links unless a
    /// dedicated host is configured): a root-level code path there is a loop; any other path
    /// is the shop itself (storefront), whose visits carry `mref` for attribution.
    pub shop: Vec<String>,
    /// Whether the shop's host also answers codes at its root (no dedicated short-link host).
    pub shop_serves_codes: bool,
}

/// Where a checked destination points.
#[derive(Debug, PartialEq, Eq)]
pub struct Destination {
    pub url: url::Url,
    /// On the shop's own host: the redirect adds `mref=<code>` for attribution.
    pub on_shop: bool,
}

fn host_matches(u: &url::Url, own: &str) -> bool {
    let Some(host) = u.host_str() else {
        return false;
    };
    let host = host.to_ascii_lowercase();
    let own = own.to_ascii_lowercase();
    let with_port = match u.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.clone(),
    };
    let default_port = u.port_or_known_default().map(|p| format!("{host}:{p}"));
    own == with_port || own == host && u.port().is_none() || Some(&own) == default_port.as_ref()
}

/// Validates a destination: absolute http(s) with a host, ≤ 2,048 chars, and not a loop (a URL
/// that would itself be answered by a short-link redirect here).
pub fn check_url(raw: &str, hosts: &Hosts) -> Result<Destination, UrlError> {
    if raw.chars().count() > MAX_URL_LEN {
        return Err(UrlError::TooLong);
    }
    let u = url::Url::parse(raw).map_err(|_| UrlError::NotAbsoluteHttp)?;
    if !matches!(u.scheme(), "http" | "https") {
        return Err(UrlError::NotAbsoluteHttp);
    }
    if u.host_str().is_none_or(str::is_empty) {
        return Err(UrlError::NotAbsoluteHttp);
    }
    if hosts.short.iter().any(|h| host_matches(&u, h)) {
        return Err(UrlError::Loop);
    }
    let on_shop = hosts.shop.iter().any(|h| host_matches(&u, h));
    if on_shop && hosts.shop_serves_codes {
        let path = u.path().trim_start_matches('/');
        if could_be_code(path) && !RESERVED.iter().any(|r| r.eq_ignore_ascii_case(path)) {
            return Err(UrlError::Loop);
        }
    }
    Ok(Destination { url: u, on_shop })
}

/// The destination the redirect sends to: UTM merged, and `mref=<code>` when it is the
/// shop's own storefront (a cart created with it is attributed to the link).
pub fn destination(dest: &Destination, utm: &Utm, code: &str) -> String {
    let merged = merge_utm(&dest.url, utm);
    if !dest.on_shop {
        return merged;
    }
    match url::Url::parse(&merged) {
        Ok(mut u) => {
            let kept: Vec<(String, String)> = u
                .query_pairs()
                .filter(|(k, _)| k != "mref")
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
            u.query_pairs_mut()
                .clear()
                .extend_pairs(kept)
                .append_pair("mref", code);
            u.to_string()
        }
        Err(_) => merged,
    }
}

/// The destination with the UTM parameters merged into its query: existing parameters are
/// kept in order, a UTM key already present is replaced in place, new ones are appended.
pub fn merge_utm(dest: &url::Url, utm: &Utm) -> String {
    let pairs = utm.pairs();
    if pairs.is_empty() {
        return dest.to_string();
    }
    let mut out = dest.clone();
    let mut existing: Vec<(String, String)> = dest
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    for (k, v) in &pairs {
        match existing.iter_mut().find(|(ek, _)| ek == k) {
            Some(e) => e.1 = (*v).to_owned(),
            None => existing.push(((*k).to_owned(), (*v).to_owned())),
        }
    }
    out.query_pairs_mut().clear().extend_pairs(existing);
    out.to_string()
}

/// What a click says about its visitor, without the visitor's address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Visit {
    pub browser: String,
    pub os: String,
    pub device: String,
    pub bot: bool,
}

/// Parses a User-Agent with woothee's maintained regex set; crawlers (and empty agents, which
/// are scripts) count as bots.
pub fn parse_agent(ua: &str) -> Visit {
    if ua.trim().is_empty() {
        return Visit {
            browser: "unknown".into(),
            os: "unknown".into(),
            device: "unknown".into(),
            bot: true,
        };
    }
    let parsed = woothee::parser::Parser::new().parse(ua);
    match parsed {
        Some(r) => {
            let device = match r.category {
                "pc" => "desktop",
                "smartphone" => "mobile",
                "mobilephone" => "mobile",
                "appliance" => "other",
                "crawler" => "bot",
                _ => "unknown",
            };
            let lower = ua.to_ascii_lowercase();
            let bot = r.category == "crawler"
                || [
                    "bot",
                    "crawler",
                    "spider",
                    "curl/",
                    "wget/",
                    "python-requests",
                ]
                .iter()
                .any(|m| lower.contains(m));
            Visit {
                browser: clean(r.name),
                os: clean(r.os),
                device: if bot { "bot".into() } else { device.into() },
                bot,
            }
        }
        None => {
            let lower = ua.to_ascii_lowercase();
            let bot = ["bot", "crawler", "spider"]
                .iter()
                .any(|m| lower.contains(m));
            Visit {
                browser: "unknown".into(),
                os: "unknown".into(),
                device: if bot { "bot".into() } else { "unknown".into() },
                bot,
            }
        }
    }
}

fn clean(s: &str) -> String {
    if s.is_empty() || s == "UNKNOWN" {
        "unknown".into()
    } else {
        s.to_owned()
    }
}

/// The referrer's host, lower case, without `www.`; `direct` when there is none.
pub fn referrer_domain(referer: Option<&str>) -> String {
    referer
        .and_then(|r| url::Url::parse(r).ok())
        .and_then(|u| u.host_str().map(|h| h.to_ascii_lowercase()))
        .map(|h| h.strip_prefix("www.").map(str::to_owned).unwrap_or(h))
        .unwrap_or_else(|| "direct".into())
}

/// A two-letter country from a trusted CDN header (`XX`/`T1` and garbage are unknown).
pub fn country(header: Option<&str>) -> String {
    match header.map(str::trim) {
        Some(c) if c.len() == 2 && c.bytes().all(|b| b.is_ascii_alphabetic()) => {
            let c = c.to_ascii_uppercase();
            if c == "XX" { "unknown".into() } else { c }
        }
        _ => "unknown".into(),
    }
}

/// Smallest and largest QR image sides accepted, pixels.
pub const QR_SIZES: std::ops::RangeInclusive<u32> = 64..=2048;

/// A QR code of `text` as an SVG document about `size` pixels square (quiet zone included).
pub fn qr_svg(text: &str, size: u32) -> Result<String, qrcode::types::QrError> {
    let code = qrcode::QrCode::new(text.as_bytes())?;
    Ok(code
        .render::<qrcode::render::svg::Color<'_>>()
        .min_dimensions(size, size)
        .quiet_zone(true)
        .build())
}

/// A QR code of `text` as a greyscale PNG at least `size` pixels square: whole pixels per
/// module (so scanners see sharp edges) and the standard 4-module quiet zone.
pub fn qr_png(text: &str, size: u32) -> anyhow::Result<Vec<u8>> {
    let code = qrcode::QrCode::new(text.as_bytes())?;
    let width = u32::try_from(code.width())?;
    let modules = code.to_colors();
    let quiet = 4u32;
    let side_modules = width + 2 * quiet;
    let scale = size.div_ceil(side_modules).max(1);
    let side = side_modules * scale;
    let mut pixels = vec![255u8; (side as usize) * (side as usize)];
    for (i, c) in modules.iter().enumerate() {
        if *c != qrcode::Color::Dark {
            continue;
        }
        let i = u32::try_from(i)?;
        let (mx, my) = (i % width + quiet, i / width + quiet);
        for y in my * scale..(my + 1) * scale {
            let row = (y * side) as usize;
            pixels[row + (mx * scale) as usize..row + ((mx + 1) * scale) as usize].fill(0);
        }
    }
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, side, side);
        enc.set_color(png::ColorType::Grayscale);
        enc.set_depth(png::BitDepth::Eight);
        let mut w = enc.write_header()?;
        w.write_image_data(&pixels)?;
        w.finish()?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_codes_are_seven_base62_characters_and_differ() {
        let a = generate_code();
        let b = generate_code();
        assert_eq!(a.len(), 7);
        assert!(a.bytes().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, b);
    }

    #[test]
    fn slugs_are_checked_for_shape_and_reserved_words() {
        assert_eq!(check_slug("summer-sale_1"), Ok(()));
        assert_eq!(check_slug("ab"), Err(SlugError::Shape));
        assert_eq!(check_slug("a b c"), Err(SlugError::Shape));
        assert_eq!(check_slug(&"x".repeat(65)), Err(SlugError::Shape));
        assert_eq!(check_slug("api"), Err(SlugError::Reserved));
        assert_eq!(check_slug("Healthz"), Err(SlugError::Reserved));
    }

    #[test]
    fn urls_must_be_absolute_http_short_and_not_loops() {
        let own = Hosts {
            short: vec!["sho.rt".to_owned()],
            shop: vec!["127.0.0.1:8080".to_owned()],
            shop_serves_codes: true,
        };
        let ok = check_url("https://example.com/a?b=1", &own).expect("an outside URL");
        assert!(!ok.on_shop);
        assert_eq!(
            check_url("javascript:alert(1)", &own).err(),
            Some(UrlError::NotAbsoluteHttp)
        );
        assert_eq!(
            check_url("/relative", &own).err(),
            Some(UrlError::NotAbsoluteHttp)
        );
        assert_eq!(
            check_url("ftp://x.org/", &own).err(),
            Some(UrlError::NotAbsoluteHttp)
        );
        let long = format!("https://example.com/{}", "a".repeat(2048));
        assert_eq!(check_url(&long, &own).err(), Some(UrlError::TooLong));
        // Anything on a dedicated short-link host is a loop.
        for u in [
            "https://SHO.RT/abc",
            "https://sho.rt/products/1",
            "http://sho.rt:80/",
        ] {
            assert_eq!(check_url(u, &own).err(), Some(UrlError::Loop), "{u}");
        }
        // On the shop's host, a root-level code is a loop; the storefront is not.
        assert_eq!(
            check_url("http://127.0.0.1:8080/abc", &own).err(),
            Some(UrlError::Loop)
        );
        let shop = check_url("http://127.0.0.1:8080/products/abc", &own).expect("the shop");
        assert!(shop.on_shop);
        assert!(check_url("http://127.0.0.1:8080/", &own).is_ok_and(|d| d.on_shop));
        assert!(check_url("http://127.0.0.1:8080/search", &own).is_ok_and(|d| d.on_shop));
        assert!(check_url("http://127.0.0.1:9999/abc", &own).is_ok_and(|d| !d.on_shop));
    }

    #[test]
    fn qr_images_have_whole_module_pixels_and_the_asked_size() {
        let png = qr_png("http://sho.rt/abc1234", 256).expect("a png");
        assert_eq!(&png[1..4], b"PNG");
        let svg = qr_svg("http://sho.rt/abc1234", 256).expect("an svg");
        assert!(svg.contains("<svg"));
        assert!(qr_png(&"x".repeat(8000), 256).is_err());
    }

    #[test]
    fn storefront_destinations_carry_the_code_as_mref() {
        let own = Hosts {
            short: vec![],
            shop: vec!["shop.example".to_owned()],
            shop_serves_codes: false,
        };
        let utm = Utm {
            source: Some("ig".into()),
            ..Utm::default()
        };
        let d = check_url("https://shop.example/products/p1?mref=old&x=1", &own).expect("shop");
        assert_eq!(
            destination(&d, &utm, "spring"),
            "https://shop.example/products/p1?x=1&utm_source=ig&mref=spring"
        );
        let d = check_url("https://elsewhere.example/p?x=1", &own).expect("outside");
        assert_eq!(
            destination(&d, &Utm::default(), "spring"),
            "https://elsewhere.example/p?x=1"
        );
    }

    #[test]
    fn utm_merge_keeps_existing_parameters() {
        let u = url::Url::parse("https://shop.example/p?color=red&utm_source=old#top")
            .expect("a valid URL");
        let utm = Utm {
            source: Some("news".into()),
            campaign: Some("spring".into()),
            ..Utm::default()
        };
        assert_eq!(
            merge_utm(&u, &utm),
            "https://shop.example/p?color=red&utm_source=news&utm_campaign=spring#top"
        );
        assert_eq!(merge_utm(&u, &Utm::default()), u.to_string());
    }

    #[test]
    fn agents_are_parsed_and_crawlers_are_bots() {
        let chrome = parse_agent(
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36",
        );
        assert_eq!(chrome.browser, "Chrome");
        assert_eq!(chrome.device, "desktop");
        assert!(!chrome.bot);
        let google =
            parse_agent("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)");
        assert!(google.bot);
        assert!(parse_agent("").bot);
    }

    #[test]
    fn referrers_and_countries_are_normalised() {
        assert_eq!(
            referrer_domain(Some("https://www.Example.com/x")),
            "example.com"
        );
        assert_eq!(referrer_domain(None), "direct");
        assert_eq!(country(Some("de")), "DE");
        assert_eq!(country(Some("XX")), "unknown");
        assert_eq!(country(Some("Germany")), "unknown");
    }
}
