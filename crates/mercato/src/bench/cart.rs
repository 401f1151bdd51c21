//! `mercato bench cart`: guest carts against a server seeded with `--size` (default 100k)
//! generated products. Each client creates a cart, adds random SKUs (the step measured
//! against the add-to-cart target), reads the cart back now and then, and starts a new cart
//! every 20 adds (a line holds at most 10 units).

use super::{BenchArgs, Recorder, Report, closed_loop, http_client};
use std::sync::Arc;
use std::time::Instant;

pub async fn run(args: &BenchArgs) -> anyhow::Result<Report> {
    let size = args.size.unwrap_or(100_000).max(1);
    let (target, ids) = super::search::in_process(args, size).await?;
    let skus = Arc::new(
        (0..size.min(ids.len()))
            .map(|n| crate::demo::sku("BENCH", n, 0))
            .collect::<Vec<_>>(),
    );
    let client = http_client(args.concurrency)?;
    let rec = Arc::new(Recorder::new());
    let base = target.base.clone();
    let carts: Arc<Vec<tokio::sync::Mutex<Option<String>>>> = Arc::new(
        (0..args.concurrency.max(1))
            .map(|_| tokio::sync::Mutex::new(None))
            .collect(),
    );
    let (r, c, s, b, k) = (
        rec.clone(),
        client.clone(),
        skus.clone(),
        base.clone(),
        carts.clone(),
    );
    let wall = closed_loop(args.concurrency, args.duration, move |w, i| {
        let (rec, client, skus, base, carts) =
            (r.clone(), c.clone(), s.clone(), b.clone(), k.clone());
        async move {
            let mut slot = carts[w % carts.len()].lock().await;
            if slot.is_none() || i % 20 == 0 {
                let t = Instant::now();
                match client.post(format!("{base}/api/v1/carts")).send().await {
                    Ok(resp) if resp.status().is_success() => {
                        let v: serde_json::Value = resp.json().await.unwrap_or_default();
                        rec.ok("create cart", t.elapsed());
                        *slot = v["id"].as_str().map(str::to_owned);
                    }
                    _ => {
                        rec.error("create cart");
                        return;
                    }
                }
            }
            let Some(cart) = slot.clone() else { return };
            let sku =
                &skus[(super::search::spread(w as u64 * 1_000_003 + i) as usize) % skus.len()];
            let t = Instant::now();
            let ok = client
                .post(format!("{base}/api/v1/carts/{cart}/items"))
                .json(&serde_json::json!({"sku": sku, "quantity": 1}))
                .send()
                .await
                .map(|r| r.status().is_success())
                .unwrap_or(false);
            if ok {
                rec.ok("add to cart", t.elapsed());
            } else {
                rec.error("add to cart");
            }
            if i % 5 == 4 {
                let t = Instant::now();
                match client
                    .get(format!("{base}/api/v1/carts/{cart}"))
                    .send()
                    .await
                {
                    Ok(resp) if resp.status().is_success() => {
                        let _ = resp.bytes().await;
                        rec.ok("get cart", t.elapsed());
                    }
                    _ => rec.error("get cart"),
                }
            }
        }
    })
    .await;
    let mut report = Report::new("cart", &target.base, args.concurrency, wall);
    report.steps = rec.stats(wall);
    report.fact("products", size);
    Ok(report)
}
