//! `mercato bench search`: search, listing and product reads against a catalog of generated
//! products (`--size`, default 100,000).
//!
//! In-process (no `--target`), the catalog is generated with the demo generator and bulk
//! inserted before the server starts; the server then builds its search index from the
//! database (a missing index is rebuilt at start) and the load starts once every product is
//! searchable and the indexer has caught up with the catalog events. Against `--target`, the
//! server must already hold a catalog (e.g. a previous in-process run's data is not kept, so
//! seed it with `serve --demo` or your own data): product ids are read from `GET /products`.
//!
//! The mix per client, in turn: 4 product reads, 2 term searches, 1 search with a typo, 1
//! filtered and sorted search, 1 faceted listing, 1 suggestion.

use super::{BenchArgs, Recorder, Report, Target, closed_loop, http_client};
use crate::demo;
use std::sync::Arc;
use std::time::{Duration, Instant};

const BATCH: usize = 2_000;

const TERMS: &[&str] = &[
    "laptop",
    "gaming laptop",
    "espresso machine",
    "running shoes",
    "wireless headphones",
    "rain jacket",
    "cast iron skillet",
    "smartphone",
    "mirrorless camera",
    "laptop bag",
    "sony",
    "patagonia",
    "noise cancelling",
    "cotton t-shirt",
    "hiking backpack",
    "coffee grinder",
];

const TYPOS: &[&str] = &[
    "lpatop",
    "espreso machine",
    "headphnes",
    "runing shoes",
    "smartphne",
    "backpak",
    "jaket",
    "skilet",
];

const FILTERED: &[&str] = &[
    "q=laptop&brand=Lenovo&sort=price_asc",
    "q=headphones&max_price=20000&in_stock=true",
    "q=shoes&min_price=8000&max_price=15000&sort=price_desc",
    "q=jacket&brand=Patagonia&brand=Columbia",
    "q=coffee&sort=newest&limit=50",
    "q=camera&rating=0&sort=rating",
];

pub(crate) async fn in_process(
    args: &BenchArgs,
    size: usize,
) -> anyhow::Result<(Target, Vec<String>)> {
    let dir = tempfile::tempdir()?;
    let mut settings = mercato_kernel::config::Settings::load(None, std::env::vars())?;
    settings.data_dir = dir.path().to_path_buf();
    settings.database_url = None;
    settings.addr = "127.0.0.1:0".into();
    settings.rate_limit_ip_per_sec = 10_000_000;
    settings.rate_limit_principal_per_sec = 10_000_000;
    settings.max_in_flight_requests = 100_000;
    let _ = args;
    let app = crate::Application::build(settings, crate::BuildOptions::default()).await?;
    let state = app.state().clone();

    let started = Instant::now();
    let seller = state
        .identity
        .create_user(
            "bench-seller@bench.mercato",
            "bench-password-123",
            Some("Bench Seller"),
            mercato_kernel::auth::Role::Seller,
        )
        .await
        .map_err(|e| anyhow::anyhow!("creating the bench seller: {e}"))?;
    let categories = demo::ensure_categories(&state.catalog).await?;
    let mut n = 0;
    while n < size {
        let count = BATCH.min(size - n);
        let products = demo::generate_products(&categories, "BENCH", n, count);
        state
            .catalog
            .seed_products(&seller.id, products)
            .await
            .map_err(|e| anyhow::anyhow!("seeding products: {e}"))?;
        n += count;
    }
    eprintln!(
        "seeded {size} products in {:.1}s",
        started.elapsed().as_secs_f64()
    );

    let addr = app
        .local_addr()
        .ok_or_else(|| anyhow::anyhow!("no listener"))?;
    let stop = app.stopper();
    let gateway = app.gateway().simulator.clone();
    tokio::spawn(app.run_until(std::future::pending()));
    let target = Target {
        base: format!("http://{addr}"),
        state: Some(state.clone()),
        gateway,
        links: None,
        _stop: Some(stop),
        _dir: Some(dir),
        _pg: None,
    };

    // Ready when every product is searchable and the indexer has caught up with the events
    // of the bulk load (so the load below does not compete with it).
    let indexed = Instant::now();
    let client = http_client(1)?;
    let url = format!("{}/api/v1/products?limit=1", target.base);
    let deadline = Instant::now() + Duration::from_secs(1800);
    loop {
        let total = match client.get(&url).send().await {
            Ok(r) => r
                .json::<serde_json::Value>()
                .await
                .ok()
                .and_then(|b| b["total"].as_u64())
                .unwrap_or(0),
            Err(_) => 0,
        };
        let lag = consumer_lag(&state).await.unwrap_or(i64::MAX);
        if total as usize >= size && lag == 0 {
            break;
        }
        if Instant::now() > deadline {
            anyhow::bail!(
                "the index did not catch up within 30 minutes ({total} of {size} products, lag {lag})"
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!(
        "indexed and caught up in {:.1}s",
        indexed.elapsed().as_secs_f64()
    );

    let mut ids = Vec::with_capacity(size);
    let mut after = String::new();
    loop {
        let page = state
            .catalog
            .product_ids_after(&after, 5_000)
            .await
            .map_err(|e| anyhow::anyhow!("listing products: {e}"))?;
        let Some(last) = page.last() else { break };
        after = last.clone();
        ids.extend(page);
    }
    Ok((target, ids))
}

/// Events the search consumer has still to read.
async fn consumer_lag(state: &mercato_commerce::AppState) -> anyhow::Result<i64> {
    let name = state.search.consumer_name()?;
    let db = &state.kernel.db;
    let head: i64 = sqlx::query_scalar("SELECT position FROM outbox_log_head WHERE id = 1")
        .fetch_one(db.reader())
        .await?;
    let pos: Option<i64> =
        sqlx::query_scalar("SELECT position FROM consumer_offsets WHERE consumer = $1")
            .bind(&name)
            .fetch_optional(db.reader())
            .await?;
    let unpublished: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE log_pos IS NULL")
        .fetch_one(db.reader())
        .await?;
    Ok(head - pos.unwrap_or(0) + unpublished)
}

/// Product ids of a running server (first pages of the listing).
async fn remote_ids(base: &str) -> anyhow::Result<Vec<String>> {
    let client = http_client(1)?;
    let mut ids = Vec::new();
    let mut cursor: Option<String> = None;
    while ids.len() < 10_000 {
        let mut url = format!("{base}/api/v1/products?limit=100");
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let body: serde_json::Value = client.get(&url).send().await?.json().await?;
        for p in body["data"].as_array().cloned().unwrap_or_default() {
            if let Some(id) = p["id"].as_str() {
                ids.push(id.to_owned());
            }
        }
        cursor = body["next_cursor"].as_str().map(str::to_owned);
        if cursor.is_none() {
            break;
        }
    }
    anyhow::ensure!(!ids.is_empty(), "the target lists no products");
    Ok(ids)
}

/// A well-spread pseudo-random number from a counter (shared by the cart bench).
pub(crate) fn spread(x: u64) -> u64 {
    mix(x)
}

fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn encode(q: &str) -> String {
    q.replace(' ', "%20")
}

pub async fn run(args: &BenchArgs) -> anyhow::Result<Report> {
    let size = args.size.unwrap_or(100_000).max(1);
    let (target, ids) = match &args.target {
        None => in_process(args, size).await?,
        Some(_) => {
            let t = super::target(args).await?;
            let ids = remote_ids(&t.base).await?;
            (t, ids)
        }
    };
    let ids = Arc::new(ids);
    let client = http_client(args.concurrency)?;
    let rec = Arc::new(Recorder::new());
    let base = Arc::new(target.base.clone());
    let (r, c) = (rec.clone(), client.clone());
    let wall = closed_loop(args.concurrency, args.duration, move |w, i| {
        let (r, c, base, ids) = (r.clone(), c.clone(), base.clone(), ids.clone());
        async move {
            let seed = mix((w as u64) << 32 | i);
            let (step, url) = match i % 10 {
                0..=3 => {
                    let id = &ids[(seed % ids.len() as u64) as usize];
                    ("GET /products/{id}", format!("{base}/api/v1/products/{id}"))
                }
                4 | 5 => {
                    let q = TERMS[(seed % TERMS.len() as u64) as usize];
                    (
                        "GET /search (terms)",
                        format!("{base}/api/v1/search?q={}", encode(q)),
                    )
                }
                6 => {
                    let q = TYPOS[(seed % TYPOS.len() as u64) as usize];
                    (
                        "GET /search (typo)",
                        format!("{base}/api/v1/search?q={}", encode(q)),
                    )
                }
                7 => {
                    let q = FILTERED[(seed % FILTERED.len() as u64) as usize];
                    (
                        "GET /search (filters, sort)",
                        format!("{base}/api/v1/search?{q}"),
                    )
                }
                8 => {
                    let price = 5_000 + (seed % 20) as i64 * 5_000;
                    (
                        "GET /products (facets)",
                        format!("{base}/api/v1/products?max_price={price}&in_stock=true"),
                    )
                }
                _ => {
                    let t = TERMS[(seed % TERMS.len() as u64) as usize];
                    let prefix: String = t.chars().take(3).collect();
                    (
                        "GET /search/suggest",
                        format!("{base}/api/v1/search/suggest?q={}", encode(&prefix)),
                    )
                }
            };
            let t = Instant::now();
            match c.get(&url).send().await {
                Ok(resp) if resp.status().is_success() => {
                    let _ = resp.bytes().await;
                    r.ok(step, t.elapsed());
                }
                _ => r.error(step),
            }
        }
    })
    .await;
    let mut report = Report::new("search", &target.base, args.concurrency, wall);
    report.steps = rec.stats(wall);
    report.fact("products", size);
    report.fact("backend", "sqlite (in-process unless --target)");
    Ok(report)
}
