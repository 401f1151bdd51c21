//! Commerce scenarios through the real HTTP API:
//!
//! - `flash-sale`: N buyers (`--concurrency`, default 32 → use e.g. 1000) race for M units
//!   (`--size`, default 100) of one SKU: cart, checkout, pay, all released at once. Reports
//!   orders confirmed, units sold, oversold units, duplicate charges, lost orders and the
//!   latency of each step.
//! - `checkout`: a closed loop of customers buying 1–3 random SKUs of a 200-product catalog
//!   with ample stock for `--duration`; reports checkouts per second and per-step latency.
//!
//! Set-up (admin, catalog, stock, customers) is done through the API too. Against a remote
//! `--target`, give an admin account with `MERCATO_BENCH_ADMIN_EMAIL` and
//! `MERCATO_BENCH_ADMIN_PASSWORD`; in-process, one is created.

use super::{BenchArgs, Recorder, Report, closed_loop, http_client, target};
use anyhow::{Context as _, bail};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

const PASSWORD: &str = "bench-password-123";

/// A tiny JSON client over one keep-alive pool.
#[derive(Clone)]
struct Api {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Api {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        key: Option<&str>,
    ) -> anyhow::Result<(u16, Value)> {
        let mut req = self
            .http
            .request(method, format!("{}/api/v1{path}", self.base));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(k) = key {
            req = req.header("idempotency-key", k);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await?;
        let v = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or(Value::Null)
        };
        Ok((status, v))
    }

    async fn post(&self, path: &str, body: Value) -> anyhow::Result<(u16, Value)> {
        self.call(reqwest::Method::POST, path, Some(&body), None)
            .await
    }

    fn with_token(&self, token: &str) -> Api {
        Api {
            token: Some(token.to_owned()),
            ..self.clone()
        }
    }
}

fn expect(step: &str, (status, body): (u16, Value), ok: &[u16]) -> anyhow::Result<Value> {
    if ok.contains(&status) {
        Ok(body)
    } else {
        bail!("{step}: HTTP {status}: {body}")
    }
}

fn id(v: &Value) -> String {
    v["id"].as_str().unwrap_or_default().to_owned()
}

/// Signs in an admin: the configured one, or one created in-process.
async fn admin(api: &Api, t: &super::Target) -> anyhow::Result<Api> {
    let (email, password) = match (
        std::env::var("MERCATO_BENCH_ADMIN_EMAIL"),
        std::env::var("MERCATO_BENCH_ADMIN_PASSWORD"),
    ) {
        (Ok(e), Ok(p)) => (e, p),
        _ => {
            let state = t.state.as_ref().context(
                "against --target, set MERCATO_BENCH_ADMIN_EMAIL and MERCATO_BENCH_ADMIN_PASSWORD",
            )?;
            let email = format!(
                "bench-admin-{}@bench.mercato",
                mercato_kernel::id::random_hex(4)
            );
            state
                .identity
                .create_user(
                    &email,
                    PASSWORD,
                    Some("Bench Admin"),
                    mercato_kernel::auth::Role::Admin,
                )
                .await
                .map_err(|e| anyhow::anyhow!("creating the bench admin: {e}"))?;
            (email, PASSWORD.to_owned())
        }
    };
    let body = expect(
        "admin login",
        api.post("/auth/login", json!({"email": email, "password": password}))
            .await?,
        &[200],
    )?;
    Ok(api.with_token(body["access_token"].as_str().unwrap_or_default()))
}

async fn customer(api: &Api, tag: &str) -> anyhow::Result<Api> {
    let email = format!("{tag}-{}@bench.mercato", mercato_kernel::id::random_hex(6));
    let body = expect(
        "register",
        api.post(
            "/auth/register",
            json!({"email": email, "password": PASSWORD}),
        )
        .await?,
        &[201],
    )?;
    Ok(api.with_token(body["access_token"].as_str().unwrap_or_default()))
}

/// Category + warehouse; returns (category id, warehouse id).
async fn shop(admin: &Api, tag: &str) -> anyhow::Result<(String, String)> {
    let cat = expect(
        "category",
        admin
            .post(
                "/categories",
                json!({"name": format!("Bench {tag}"), "slug": format!("bench-{tag}")}),
            )
            .await?,
        &[201],
    )?;
    let wh = expect(
        "warehouse",
        admin
            .post(
                "/warehouses",
                json!({"code": format!("B-{tag}"), "name": "Bench", "country": "US"}),
            )
            .await?,
        &[201],
    )?;
    Ok((id(&cat), id(&wh)))
}

async fn product(
    admin: &Api,
    category: &str,
    sku: &str,
    price: i64,
    wh: &str,
    stock: i64,
) -> anyhow::Result<()> {
    expect(
        "product",
        admin
            .post(
                "/products",
                json!({"name": format!("Bench {sku}"), "brand": "Bench", "category_id": category,
                       "variants": [{"sku": sku, "name": sku, "price": {"amount": price, "currency": "USD"}}]}),
            )
            .await?,
        &[201],
    )?;
    expect(
        "stock",
        admin
            .call(
                reqwest::Method::PUT,
                &format!("/inventory/{sku}/warehouses/{wh}"),
                Some(&json!({"on_hand": stock})),
                None,
            )
            .await?,
        &[200],
    )?;
    Ok(())
}

fn address() -> Value {
    json!({"name": "Bench Buyer", "line1": "1 Main St", "city": "Austin", "region": "TX", "postal_code": "73301", "country": "US"})
}

async fn timed<T>(
    rec: &Recorder,
    step: &str,
    f: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    let t = Instant::now();
    let r = f.await;
    match &r {
        Ok(_) => rec.ok(step, t.elapsed()),
        Err(_) => rec.error(step),
    }
    r
}

/// `mercato bench flash-sale`.
pub async fn flash_sale(args: &BenchArgs) -> anyhow::Result<Report> {
    let units = i64::try_from(args.size.unwrap_or(100)).unwrap_or(100);
    let buyers = args.concurrency.max(1);
    // Client and in-process server share one open-file limit (often 20,000 here): at most this
    // many requests are in flight at once; every buyer is released at the same moment and waits
    // for a connection like a browser behind a busy network would.
    let connections = buyers.min(4_000);
    let permits = Arc::new(tokio::sync::Semaphore::new(connections));
    let t = target(args).await?;
    let http = http_client(connections)?;
    let api = Api {
        http,
        base: t.base.clone(),
        token: None,
    };
    let admin = admin(&api, &t).await?;
    let tag = mercato_kernel::id::random_hex(3);
    let (cat, wh) = shop(&admin, &tag).await?;
    let sku = format!("FLASH-{tag}").to_uppercase();
    product(&admin, &cat, &sku, 1999, &wh, units).await?;
    eprintln!("registering {buyers} buyers…");
    let mut clients = Vec::with_capacity(buyers);
    for i in 0..buyers {
        clients.push(customer(&api, &format!("flash{i}")).await?);
    }
    let rec = Arc::new(Recorder::new());
    let confirmed = Arc::new(AtomicU64::new(0));
    let sold_out = Arc::new(AtomicU64::new(0));
    let gate = Arc::new(tokio::sync::Barrier::new(buyers));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(buyers);
    for (i, c) in clients.into_iter().enumerate() {
        let (rec, confirmed, sold_out, gate, sku) = (
            rec.clone(),
            confirmed.clone(),
            sold_out.clone(),
            gate.clone(),
            sku.clone(),
        );
        let permits = permits.clone();
        tasks.push(tokio::spawn(async move {
            gate.wait().await;
            let total = Instant::now();
            let result: anyhow::Result<()> = async {
                let _p = permits.acquire().await?;
                let cart = timed(&rec, "1 create cart", async {
                    expect("cart", c.post("/carts", json!({})).await?, &[200, 201])
                })
                .await?;
                let cart_id = id(&cart);
                drop(_p);
                let _p = permits.acquire().await?;
                let t0 = Instant::now();
                let add = c
                    .post(
                        &format!("/carts/{cart_id}/items"),
                        json!({"sku": sku, "quantity": 1}),
                    )
                    .await?;
                if add.0 == 409 {
                    rec.ok("2 add to cart: sold out (409)", t0.elapsed());
                } else {
                    expect("add", add, &[200])?;
                    rec.ok("2 add to cart", t0.elapsed());
                }
                drop(_p);
                let _p = permits.acquire().await?;
                let t0 = Instant::now();
                let chk = c
                    .post(
                        "/checkouts",
                        json!({"cart_id": cart_id, "shipping_address": address()}),
                    )
                    .await?;
                if chk.0 == 409 {
                    rec.ok("3 checkout: sold out (409)", t0.elapsed());
                    sold_out.fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                }
                let chk = expect("checkout", chk, &[201])?;
                rec.ok("3 checkout (reserve)", t0.elapsed());
                drop(_p);
                let _p = permits.acquire().await?;
                timed(&rec, "4 pay", async {
                    expect(
                        "pay",
                        c.call(
                            reqwest::Method::POST,
                            &format!("/checkouts/{}/pay", id(&chk)),
                            Some(&json!({"payment_method": "card", "payment_token": "tok_visa"})),
                            Some(&format!("flash-{i}")),
                        )
                        .await?,
                        &[201],
                    )
                })
                .await?;
                confirmed.fetch_add(1, Ordering::Relaxed);
                rec.ok("end to end (buyers who got one)", total.elapsed());
                Ok(())
            }
            .await;
            if let Err(e) = result {
                tracing::debug!(error = %e, "buyer failed");
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    let wall = started.elapsed();
    let stock = expect(
        "stock",
        admin
            .call(
                reqwest::Method::GET,
                &format!("/inventory/{sku}"),
                None,
                None,
            )
            .await?,
        &[200],
    )?;
    let on_hand = stock["on_hand"].as_i64().unwrap_or(-1);
    let reserved = stock["reserved"].as_i64().unwrap_or(-1);
    let sold = units - on_hand;
    let confirmed = i64::try_from(confirmed.load(Ordering::Relaxed)).unwrap_or(i64::MAX);
    let mut report = Report::new("flash-sale", &t.base, buyers, wall);
    report.steps = rec.stats(wall);
    report.fact("units", units);
    report.fact("buyers", buyers);
    report.fact("orders confirmed", confirmed);
    report.fact("sold out answers", sold_out.load(Ordering::Relaxed));
    report.fact("units sold", sold);
    report.invariant("oversold units", (sold - units).max(0), 0);
    report.invariant("units sold - orders confirmed", sold - confirmed, 0);
    report.invariant("reserved after the sale", reserved, 0);
    if let Some(gw) = &t.gateway {
        let captured = gw.charges().iter().filter(|c| c.captured).count() as i64;
        report.invariant("duplicate charges", (captured - confirmed).max(0), 0);
        report.invariant("charges without an order", (captured - confirmed).max(0), 0);
    }
    Ok(report)
}

/// `mercato bench checkout`.
pub async fn checkout(args: &BenchArgs) -> anyhow::Result<Report> {
    let products = args.size.unwrap_or(200).max(1);
    let t = target(args).await?;
    let http = http_client(args.concurrency)?;
    let api = Api {
        http,
        base: t.base.clone(),
        token: None,
    };
    let admin = admin(&api, &t).await?;
    let tag = mercato_kernel::id::random_hex(3);
    let (cat, wh) = shop(&admin, &tag).await?;
    eprintln!("seeding {products} products with stock…");
    let mut skus = Vec::with_capacity(products);
    for i in 0..products {
        let sku = format!("CO-{tag}-{i}").to_uppercase();
        product(
            &admin,
            &cat,
            &sku,
            500 + (i as i64 % 50) * 100,
            &wh,
            1_000_000,
        )
        .await?;
        skus.push(sku);
    }
    let mut buyers = Vec::with_capacity(args.concurrency);
    for i in 0..args.concurrency.max(1) {
        buyers.push(customer(&api, &format!("co{i}")).await?);
    }
    if args.profile {
        return profile(&t, &buyers[0], &skus).await;
    }
    // `--coupon`: 10 % off every purchase, no usage limit (each use is still reserved at
    // checkout and committed at pay, like any coupon).
    let coupon: Arc<Option<String>> = Arc::new(if args.coupon {
        let code = format!("BENCH{tag}").to_uppercase();
        expect(
            "coupon",
            admin
                .post(
                    "/admin/promotions",
                    json!({"name": "Bench coupon", "code": code, "kind": "percent_off",
                           "value": 1000, "status": "active"}),
                )
                .await?,
            &[201],
        )?;
        Some(code)
    } else {
        None
    });
    let buyers = Arc::new(buyers);
    let skus = Arc::new(skus);
    let rec = Arc::new(Recorder::new());
    let done = Arc::new(AtomicU64::new(0));
    let (r, d, b, s, cp) = (
        rec.clone(),
        done.clone(),
        buyers.clone(),
        skus.clone(),
        coupon.clone(),
    );
    let wall = closed_loop(args.concurrency, args.duration, move |w, i| {
        let (rec, done, buyers, skus, coupon) =
            (r.clone(), d.clone(), b.clone(), s.clone(), cp.clone());
        async move {
            let c = &buyers[w % buyers.len()];
            let total = Instant::now();
            match purchase(c, &skus, coupon.as_deref(), w, i, &mut |step, d| {
                rec.ok(step, d)
            })
            .await
            {
                Ok(()) => {
                    rec.ok("checkout end to end", total.elapsed());
                    done.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    rec.error("checkout end to end");
                    tracing::debug!(error = %e, "checkout failed");
                }
            }
        }
    })
    .await;
    let mut report = Report::new("checkout", &t.base, args.concurrency, wall);
    if let Some(state) = &t.state {
        writer_facts(&mut report, &state.kernel.db, wall);
    }
    report.steps = rec.stats(wall);
    let n = done.load(Ordering::Relaxed);
    report.fact("products", products);
    report.fact("coupon on every purchase", coupon.is_some());
    report.fact("checkouts completed", n);
    report.fact(
        "checkouts per second",
        format!("{:.1}", n as f64 / wall.as_secs_f64().max(1e-9)),
    );
    if let Some(gw) = &t.gateway {
        let captured = gw.charges().iter().filter(|c| c.captured).count() as i64;
        report.invariant(
            "charges - completed checkouts",
            captured - i64::try_from(n).unwrap_or(0),
            0,
        );
    }
    Ok(report)
}

/// One purchase of the checkout scenario: cart, 1–3 adds, checkout, pay. `step` is called
/// with each step's name and latency as it completes.
async fn purchase(
    c: &Api,
    skus: &[String],
    coupon: Option<&str>,
    w: usize,
    i: u64,
    step: &mut (dyn FnMut(&'static str, std::time::Duration) + Send),
) -> anyhow::Result<()> {
    let t = Instant::now();
    let cart = expect("cart", c.post("/carts", json!({})).await?, &[200, 201])?;
    step("create cart", t.elapsed());
    let cart_id = id(&cart);
    let lines = 1 + (i as usize + w) % 3;
    for k in 0..lines {
        let sku = &skus[(w * 7919 + i as usize * 104_729 + k * 31) % skus.len()];
        let t = Instant::now();
        expect(
            "add",
            c.post(
                &format!("/carts/{cart_id}/items"),
                json!({"sku": sku, "quantity": 1}),
            )
            .await?,
            &[200],
        )?;
        step("add to cart", t.elapsed());
    }
    let t = Instant::now();
    let mut body = json!({"cart_id": cart_id, "shipping_address": address()});
    if let Some(code) = coupon {
        body["coupon_code"] = json!(code);
    }
    let chk = expect("checkout", c.post("/checkouts", body).await?, &[201])?;
    step("checkout (reserve)", t.elapsed());
    let t = Instant::now();
    expect(
        "pay",
        c.call(
            reqwest::Method::POST,
            &format!("/checkouts/{}/pay", id(&chk)),
            Some(&json!({"payment_method": "card", "payment_token": "tok_visa"})),
            Some(&format!("co-{w}-{i}-{}", mercato_kernel::id::random_hex(4))),
        )
        .await?,
        &[201],
    )?;
    step("pay", t.elapsed());
    Ok(())
}

/// `bench checkout --profile`: purchases one at a time, counting per step the write
/// transactions, durable commits and SQL statements (all statements, reads included). Work
/// done in the background — the gateway's webhook, the event bus delivering to consumers — is
/// counted once the purchases are over and the bus is idle, and reported per purchase.
async fn profile(t: &super::Target, buyer: &Api, skus: &[String]) -> anyhow::Result<Report> {
    use std::collections::BTreeMap;
    const PURCHASES: u64 = 200;
    let state = t
        .state
        .as_ref()
        .context("--profile runs in-process only (it reads the server's counters)")?;
    let db = state.kernel.db.clone();
    // Counting statements makes sqlx format each one, which inflates the hold times below:
    // MERCATO_BENCH_PROFILE_STATEMENTS=0 times the transactions without it.
    let statements = std::env::var("MERCATO_BENCH_PROFILE_STATEMENTS").map_or(true, |v| v != "0");
    mercato_kernel::telemetry::count_statements(statements);
    mercato_kernel::db::count_begins(true);
    let snap = |db: &mercato_kernel::db::Db| {
        let s = db.stats().snapshot();
        (
            s.transactions,
            s.commits,
            mercato_kernel::telemetry::statements(),
        )
    };
    // Warm up (prepared statement caches, the first lease of every consumer), then settle.
    for i in 0..10 {
        purchase(buyer, skus, None, 0, i, &mut |_, _| {}).await?;
    }
    settle(&db).await;
    let mut per_step: BTreeMap<&'static str, (u64, u64, u64, u64)> = BTreeMap::new();
    let started = Instant::now();
    let before = snap(&db);
    for i in 0..PURCHASES {
        let mut last = snap(&db);
        let mut on_step = |name: &'static str, _| {
            let now = snap(&db);
            let e = per_step.entry(name).or_default();
            e.0 += 1;
            e.1 += now.0 - last.0;
            e.2 += now.1 - last.1;
            e.3 += now.2 - last.2;
            last = now;
        };
        purchase(buyer, skus, None, 0, 100 + i, &mut on_step).await?;
    }
    let wall = started.elapsed();
    settle(&db).await;
    let after = snap(&db);
    mercato_kernel::telemetry::count_statements(false);
    mercato_kernel::db::count_begins(false);
    eprintln!(
        "write transactions per purchase, by the line that began them, and the mean time each held SQLite's writer (warm-up included):"
    );
    for (at, n, us) in mercato_kernel::db::begins_by_caller() {
        eprintln!(
            "{:>7.2}  {:>8.1} µs  {at}",
            n as f64 / (PURCHASES + 10) as f64,
            us as f64 / n.max(1) as f64
        );
    }
    eprintln!("statements per purchase, by text (warm-up included):");
    for (text, n) in mercato_kernel::telemetry::statements_by_text()
        .iter()
        .take(60)
    {
        eprintln!("{:>7.2}  {text}", *n as f64 / (PURCHASES + 10) as f64);
    }
    let mut report = Report::new("checkout --profile", &t.base, 1, wall);
    let per = |x: u64| format!("{:.1}", x as f64 / PURCHASES as f64);
    let (mut st, mut sc, mut ss) = (0, 0, 0);
    for (name, (n, tx, commits, stmts)) in &per_step {
        report.fact(
            &format!("step {name}"),
            format!(
                "{:.2} calls; per purchase: {} transactions, {} commits, {} statements",
                *n as f64 / PURCHASES as f64,
                per(*tx),
                per(*commits),
                per(*stmts)
            ),
        );
        st += tx;
        sc += commits;
        ss += stmts;
    }
    let (tx, commits, stmts) = (after.0 - before.0, after.1 - before.1, after.2 - before.2);
    report.fact(
        "step zz background (webhook, event bus)",
        format!(
            "per purchase: {} transactions, {} commits, {} statements",
            per(tx - st),
            per(commits - sc),
            per(stmts - ss)
        ),
    );
    report.fact(
        "total per purchase",
        format!(
            "{} write transactions, {} durable commits, {} SQL statements ({} purchases, backend {})",
            per(tx),
            per(commits),
            per(stmts),
            PURCHASES,
            db.backend().as_str()
        ),
    );
    Ok(report)
}

/// How busy the writer was during a run (SQLite's group committer; zeros on PostgreSQL).
fn writer_facts(report: &mut Report, db: &mercato_kernel::db::Db, wall: std::time::Duration) {
    let s = db.stats().snapshot();
    let wall_us = wall.as_micros().max(1) as f64;
    report.fact(
        "writer",
        format!(
            "{} transactions in {} durable commits (mean batch {:.1}); lent to transactions {:.0} % of the time, in BEGIN/COMMIT {:.0} % (whole process life)",
            s.transactions,
            s.commits,
            s.transactions as f64 / s.commits.max(1) as f64,
            s.in_transactions_us as f64 / wall_us * 100.0,
            s.in_commit_us as f64 / wall_us * 100.0,
        ),
    );
}

/// Waits until the event bus has delivered everything and the writer is quiet.
async fn settle(db: &mercato_kernel::db::Db) {
    let mut quiet = 0;
    let mut last = db.stats().snapshot().transactions;
    for _ in 0..200 {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let now = db.stats().snapshot().transactions;
        if now == last {
            quiet += 1;
            if quiet >= 6 {
                return;
            }
        } else {
            quiet = 0;
            last = now;
        }
    }
}

/// `mercato bench db-commit`: the floor under every write path — durable commits per second
/// through the kernel's `Db` (BEGIN IMMEDIATE on SQLite's single writer, `synchronous=FULL`),
/// each one conditional UPDATE of a hot row, from `--concurrency` tasks.
pub async fn db_commit(args: &BenchArgs) -> anyhow::Result<Report> {
    let t = target(args).await?;
    let state = t.state.as_ref().context("db-commit runs in-process only")?;
    let db = state.kernel.db.clone();
    db.execute_write(sqlx::query(
        "CREATE TABLE IF NOT EXISTS bench_counter (id BIGINT PRIMARY KEY, n BIGINT NOT NULL)",
    ))
    .await?;
    db.execute_write(sqlx::query(
        "INSERT INTO bench_counter (id, n) VALUES (1, 0) ON CONFLICT (id) DO NOTHING",
    ))
    .await?;
    // `--size N`: statements per transaction (default 1), to measure what one more statement
    // costs (on SQLite: a round trip to sqlx's worker thread).
    let statements = args.size.unwrap_or(1).clamp(1, 1000);
    let step: &'static str = if statements == 1 {
        "commit (1 conditional UPDATE)"
    } else {
        Box::leak(format!("commit ({statements} conditional UPDATEs)").into_boxed_str())
    };
    let rec = Arc::new(Recorder::new());
    let r = rec.clone();
    let before = db.stats().snapshot();
    let stats_db = db.clone();
    let wall = closed_loop(args.concurrency, args.duration, move |_, _| {
        let (db, rec) = (db.clone(), r.clone());
        async move {
            let t0 = Instant::now();
            let res: anyhow::Result<()> = async {
                let mut tx = db.begin().await?;
                for _ in 0..statements {
                    sqlx::query("UPDATE bench_counter SET n = n + 1 WHERE id = 1 AND n >= 0")
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                Ok(())
            }
            .await;
            match res {
                Ok(()) => rec.ok(step, t0.elapsed()),
                Err(_) => rec.error(step),
            }
        }
    })
    .await;
    let mut report = Report::new("db-commit", &t.base, args.concurrency, wall);
    report.steps = rec.stats(wall);
    let after = stats_db.stats().snapshot();
    report.fact(
        "durable commits",
        format!(
            "{} for {} transactions",
            after.commits - before.commits,
            after.transactions - before.transactions
        ),
    );
    Ok(report)
}

/// `mercato bench flash-sale --waiting-room`: `--concurrency` customers (e.g. 10,000) join the
/// waiting room of a sale of `--size` units (default 1,000) before it starts, then poll once a
/// second; an admitted customer buys one unit with its purchase token (cart, checkout, pay),
/// the others stop at `sold_out`. Reports units sold, oversold, tokens issued/redeemed/expired,
/// the time from the start to the last unit sold, and the latency of each kind of answer.
pub async fn flash_sale_waiting_room(args: &BenchArgs) -> anyhow::Result<Report> {
    const ADMIT_PER_MINUTE: i64 = 60_000;
    let units = i64::try_from(args.size.unwrap_or(1000)).unwrap_or(1000);
    let customers = args.concurrency.max(1);
    let connections = customers.min(4_000);
    let permits = Arc::new(tokio::sync::Semaphore::new(connections));
    let t = target(args).await?;
    let http = http_client(connections)?;
    let api = Api {
        http,
        base: t.base.clone(),
        token: None,
    };
    let admin = admin(&api, &t).await?;
    let tag = mercato_kernel::id::random_hex(3);
    let (cat, wh) = shop(&admin, &tag).await?;
    let sku = format!("WR-{tag}").to_uppercase();
    // A little stock beyond the sale's units: it stays unsold (the SKU is token-only while
    // the sale runs).
    product(&admin, &cat, &sku, 1999, &wh, units + 100).await?;
    eprintln!("registering {customers} customers…");
    let mut clients = Vec::with_capacity(customers);
    let mut pending = tokio::task::JoinSet::new();
    for i in 0..customers {
        let api = api.clone();
        pending.spawn(async move { customer(&api, &format!("wr{i}")).await });
        if pending.len() >= 32
            && let Some(r) = pending.join_next().await
        {
            clients.push(r??);
        }
    }
    while let Some(r) = pending.join_next().await {
        clients.push(r??);
    }
    // Everyone joins before the start (so the start's shuffle decides the order).
    let lead = 5 + i64::try_from(customers / 1_000).unwrap_or(0);
    let now = mercato_kernel::clock::Clock::now(&mercato_kernel::clock::SystemClock);
    let starts_at = now.plus_secs(lead);
    let sale = expect(
        "flash sale",
        admin
            .post(
                "/admin/flash-sales",
                json!({"sku": sku, "price": {"amount": 999, "currency": "USD"}, "units": units,
                       "starts_at": starts_at.to_rfc3339(),
                       "ends_at": starts_at.plus_secs(3600).to_rfc3339(),
                       "per_customer_limit": 1, "admit_per_minute": ADMIT_PER_MINUTE,
                       "token_ttl_secs": 300}),
            )
            .await?,
        &[201],
    )?;
    let sale_id = id(&sale);
    let rec = Arc::new(Recorder::new());
    eprintln!("{customers} customers join the waiting room…");
    let mut joins = tokio::task::JoinSet::new();
    for c in clients {
        let (rec, permits, sale_id) = (rec.clone(), permits.clone(), sale_id.clone());
        joins.spawn(async move {
            let _p = permits.acquire().await?;
            let t0 = Instant::now();
            let r = expect(
                "join",
                c.post(&format!("/flash-sales/{sale_id}/queue"), json!({}))
                    .await?,
                &[202],
            )?;
            rec.ok("join (202)", t0.elapsed());
            anyhow::Ok((c, r["ticket"].as_str().unwrap_or_default().to_owned()))
        });
    }
    let mut joined = Vec::with_capacity(customers);
    while let Some(r) = joins.join_next().await {
        match r? {
            Ok(x) => joined.push(x),
            Err(e) => {
                rec.error("join (202)");
                tracing::debug!(error = %e, "join failed");
            }
        }
    }
    let wait = (starts_at.as_micros()
        - mercato_kernel::clock::Clock::now(&mercato_kernel::clock::SystemClock).as_micros())
    .max(0);
    if wait == 0 {
        eprintln!("warning: joining took longer than the lead; some joined after the start");
    }
    tokio::time::sleep(std::time::Duration::from_micros(
        u64::try_from(wait).unwrap_or(0),
    ))
    .await;
    eprintln!("the sale starts: polling once a second…");
    let started = Instant::now();
    let confirmed = Arc::new(AtomicU64::new(0));
    let last_sale_us = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for (i, (c, ticket)) in joined.into_iter().enumerate() {
        let (rec, permits, sale_id, sku, confirmed, last_sale_us) = (
            rec.clone(),
            permits.clone(),
            sale_id.clone(),
            sku.clone(),
            confirmed.clone(),
            last_sale_us.clone(),
        );
        tasks.spawn(async move {
            let path = format!("/flash-sales/{sale_id}/queue/{ticket}");
            // Real customers are not in lock-step: spread the first polls over the first
            // second, then each polls a full second after its previous answer.
            tokio::time::sleep(std::time::Duration::from_millis((i % 1000) as u64)).await;
            loop {
                let p = permits.acquire().await?;
                let t0 = Instant::now();
                let (status, body) = c.call(reqwest::Method::GET, &path, None, None).await?;
                let took = t0.elapsed();
                drop(p);
                let state = body["status"].as_str().unwrap_or_default();
                match (status, state) {
                    (429, _) => rec.ok("poll: 429 (too fast)", took),
                    (200, "waiting") => rec.ok("poll: waiting", took),
                    (200, "sold_out") => {
                        rec.ok("poll: sold out", took);
                        return anyhow::Ok(());
                    }
                    (200, "expired") => {
                        rec.ok("poll: expired", took);
                        return Ok(());
                    }
                    (200, "admitted") => {
                        rec.ok("poll: admitted (token issued)", took);
                        let token = body["purchase_token"].as_str().unwrap_or_default();
                        let _p = permits.acquire().await?;
                        let cart = timed(&rec, "buy: create cart", async {
                            expect("cart", c.post("/carts", json!({})).await?, &[200, 201])
                        })
                        .await?;
                        let cart_id = id(&cart);
                        timed(&rec, "buy: add with token", async {
                            expect(
                                "add",
                                c.post(
                                    &format!("/carts/{cart_id}/items"),
                                    json!({"sku": sku, "quantity": 1, "purchase_token": token}),
                                )
                                .await?,
                                &[200],
                            )
                        })
                        .await?;
                        let chk = timed(&rec, "buy: checkout", async {
                            expect(
                                "checkout",
                                c.post(
                                    "/checkouts",
                                    json!({"cart_id": cart_id, "shipping_address": address()}),
                                )
                                .await?,
                                &[201],
                            )
                        })
                        .await?;
                        timed(&rec, "buy: pay", async {
                            expect(
                                "pay",
                                c.call(
                                    reqwest::Method::POST,
                                    &format!("/checkouts/{}/pay", id(&chk)),
                                    Some(&json!({"payment_method": "card", "payment_token": "tok_visa"})),
                                    Some(&format!("wr-{i}")),
                                )
                                .await?,
                                &[201],
                            )
                        })
                        .await?;
                        confirmed.fetch_add(1, Ordering::Relaxed);
                        last_sale_us.fetch_max(
                            u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
                            Ordering::Relaxed,
                        );
                        return Ok(());
                    }
                    _ => {
                        rec.error("poll");
                        bail!("poll: HTTP {status}: {body}");
                    }
                }
                // Once a second, as the room asks (a full second after the answer, so two polls
                // never reach the server less than a second apart).
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        });
    }
    let mut failed = 0u64;
    while let Some(r) = tasks.join_next().await {
        if !matches!(r, Ok(Ok(()))) {
            failed += 1;
        }
    }
    let wall = started.elapsed();
    let counters = expect(
        "counters",
        admin
            .call(
                reqwest::Method::GET,
                &format!("/admin/flash-sales/{sale_id}"),
                None,
                None,
            )
            .await?,
        &[200],
    )?;
    let n = |k: &str| counters[k].as_i64().unwrap_or(-1);
    let sold = n("sold");
    let confirmed = i64::try_from(confirmed.load(Ordering::Relaxed)).unwrap_or(i64::MAX);
    let mut report = Report::new("flash-sale --waiting-room", &t.base, customers, wall);
    report.steps = rec.stats(wall);
    report.fact("customers", customers);
    report.fact("units", units);
    report.fact("admit_per_minute", ADMIT_PER_MINUTE);
    report.fact("sold", sold);
    report.fact("orders confirmed", confirmed);
    report.fact("tokens issued", n("tokens_issued"));
    report.fact("tokens redeemed", n("tokens_redeemed"));
    report.fact("tokens expired", n("tokens_expired"));
    report.fact("customers whose run failed", failed);
    report.fact(
        "start to sold out (s)",
        if sold == units {
            format!(
                "{:.2}",
                last_sale_us.load(Ordering::Relaxed) as f64 / 1_000_000.0
            )
        } else {
            "not sold out".to_owned()
        },
    );
    report.invariant("sold - units", sold - units, 0);
    report.invariant("oversold units", (sold - units).max(0), 0);
    report.invariant("sold - orders confirmed", sold - confirmed, 0);
    if let Some(gw) = &t.gateway {
        let captured = gw.charges().iter().filter(|c| c.captured).count() as i64;
        report.invariant("duplicate charges", (captured - confirmed).max(0), 0);
    }
    Ok(report)
}
