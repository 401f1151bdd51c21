//! `mercato bench redirect`: the short-link redirect against a bare hello-world axum server, in
//! one run and with one load generator.
//!
//! 1. a hello-world axum server (`GET /` → 200 "Hello, World!"): the ceiling of the HTTP stack;
//! 2. Mercato's redirect for `--size` links (default 10,000; cache warmed by one pass);
//! 3. a flood of `--size` random unknown codes (each asked once before, so negatively cached):
//!    the database reads it causes must be 0.
//!
//! Load is closed loop at `--concurrency` connections for `--duration` per phase, from `wrk`
//! when it is on PATH (the exact command is printed) or else from the built-in client. After the
//! redirect phase the click batcher is drained: clicks written must equal clicks queued (every
//! redirect served while the queue was not full), and drops are reported.

use super::{BenchArgs, Recorder, Report, StepStats, closed_loop};
use mercato_links::store::LinkRow;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

pub async fn run(args: &BenchArgs) -> anyhow::Result<Report> {
    if args.target.is_some() {
        anyhow::bail!(
            "bench redirect runs its own servers (it reads the cache and click counters in process)"
        );
    }
    let size = args.size.unwrap_or(10_000).max(1);
    let hello = hello_world().await?;
    let target = super::target(args).await?;
    let links = target
        .links
        .clone()
        .ok_or_else(|| anyhow::anyhow!("the in-process target has no links system"))?;
    let dir = tempfile::tempdir()?;

    let started = Instant::now();
    let codes = seed(&links, size).await?;
    eprintln!(
        "seeded {size} links in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let unknown: Vec<String> = (0..size)
        .map(|i| format!("zz{}{i}", mercato_kernel::id::random_hex(3)))
        .collect();
    // Warm: every link once (fills the cache, queues a click), every unknown code once (one
    // database read each, then negatively cached).
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(args.concurrency.max(1))
        .build()?;
    warm(&client, &target.base, &codes, 302).await?;
    warm(&client, &target.base, &unknown, 404).await?;

    let wrk = which("wrk");
    let mut report = Report::new("redirect", &target.base, args.concurrency, args.duration);
    report.fact("links", size);
    report.fact(
        "load",
        if wrk.is_some() {
            "wrk (external, closed loop)"
        } else {
            "built-in client (wrk not on PATH)"
        },
    );

    let hello_url = format!("http://{hello}/");
    let hello_stats = drive(
        args,
        wrk.as_deref(),
        &client,
        &hello_url,
        None,
        "hello world",
    )
    .await?;
    report.fact("cmd hello", hello_stats.1.clone());

    let known = script(dir.path(), "known.lua", &codes)?;
    let reads_before_known = links.cache().db_reads();
    let redirect_stats = drive(
        args,
        wrk.as_deref(),
        &client,
        &target.base,
        Some((&known, &codes)),
        "redirect (cached)",
    )
    .await?;
    report.fact("cmd redirect", redirect_stats.1.clone());
    let reads_known = links.cache().db_reads() - reads_before_known;

    let unknown_script = script(dir.path(), "unknown.lua", &unknown)?;
    let reads_before = links.cache().db_reads();
    let unknown_stats = drive(
        args,
        wrk.as_deref(),
        &client,
        &target.base,
        Some((&unknown_script, &unknown)),
        "unknown code (404)",
    )
    .await?;
    report.fact("cmd unknown", unknown_stats.1.clone());
    let reads_unknown = links.cache().db_reads() - reads_before;

    // Drain the click batcher (it flushes at least once a second).
    let counters = links.queue().counters.clone();
    let deadline = Instant::now() + Duration::from_secs(120);
    while counters.written.load(Ordering::Relaxed) < counters.queued.load(Ordering::Relaxed)
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let queued = counters.queued.load(Ordering::Relaxed);
    let dropped = counters.dropped.load(Ordering::Relaxed);
    let written = counters.written.load(Ordering::Relaxed);

    let ratio = redirect_stats.0.throughput_per_sec / hello_stats.0.throughput_per_sec.max(1e-9);
    report.fact(
        "redirect/hello",
        format!(
            "{:.0} % of hello-world throughput (target >= 80 %)",
            ratio * 100.0
        ),
    );
    report.fact(
        "redirect p99",
        format!("{:.2} ms (target < 2 ms)", redirect_stats.0.p99_ms),
    );
    report.fact(
        "clicks",
        format!("{queued} queued, {dropped} dropped (queue full), {written} written"),
    );
    report.steps = vec![hello_stats.0, redirect_stats.0, unknown_stats.0];
    report.invariant(
        "db reads during the unknown-code flood",
        reads_unknown as i64,
        0,
    );
    report.invariant("db reads during cached redirects", reads_known as i64, 0);
    report.invariant(
        "clicks written - clicks queued",
        written as i64 - queued as i64,
        0,
    );
    Ok(report)
}

/// A bare axum server answering `GET /` with a fixed body.
async fn hello_world() -> anyhow::Result<std::net::SocketAddr> {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    let app = axum::Router::new().route("/", axum::routing::get(|| async { "Hello, World!" }));
    tokio::spawn(async move {
        let _ = axum::serve(l, app).await;
    });
    Ok(addr)
}

/// Inserts `n` links (32 writers) and returns their codes.
async fn seed(links: &mercato_links::Links, n: usize) -> anyhow::Result<Vec<String>> {
    let store = links.store().clone();
    let now = links.0.clock.now();
    let writers = 32usize;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut codes = Vec::new();
            for i in (w..n).step_by(writers) {
                let row = LinkRow {
                    id: mercato_kernel::id::new_id("lnk"),
                    code: mercato_links::model::generate_code(),
                    owner_id: "usr_bench".into(),
                    url: format!("https://example.com/p/{i}"),
                    destination: format!("https://example.com/p/{i}"),
                    utm: "null".into(),
                    tags: "[]".into(),
                    redirect_status: 302,
                    expires_at: None,
                    max_clicks: None,
                    clicks: 0,
                    created_at: now.as_micros(),
                    updated_at: now.as_micros(),
                };
                // A (rare) code collision is skipped.
                if store.insert(&row, &[], now).await.is_ok() {
                    codes.push(row.code);
                }
            }
            codes
        }));
    }
    let mut codes = Vec::with_capacity(n);
    for t in tasks {
        codes.extend(t.await?);
    }
    Ok(codes)
}

async fn warm(
    client: &reqwest::Client,
    base: &str,
    codes: &[String],
    expect: u16,
) -> anyhow::Result<()> {
    let mut bad = 0usize;
    for chunk in codes.chunks(64) {
        let mut set = tokio::task::JoinSet::new();
        for c in chunk {
            let (client, url) = (client.clone(), format!("{base}/{c}"));
            set.spawn(async move {
                client
                    .get(url)
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0)
            });
        }
        while let Some(s) = set.join_next().await {
            if s.unwrap_or(0) != expect {
                bad += 1;
            }
        }
    }
    if bad > 0 {
        anyhow::bail!("{bad} warm-up requests did not answer {expect}");
    }
    Ok(())
}

/// A wrk script that asks the codes in random order.
fn script(dir: &Path, name: &str, codes: &[String]) -> anyhow::Result<std::path::PathBuf> {
    let mut lua = String::from("local paths = {\n");
    for c in codes {
        lua.push_str(&format!("\"/{c}\",\n"));
    }
    lua.push_str(
        "}\nrequest = function()\n  return wrk.format(\"GET\", paths[math.random(#paths)])\nend\n",
    );
    let path = dir.join(name);
    std::fs::write(&path, lua)?;
    Ok(path)
}

fn which(tool: &str) -> Option<String> {
    std::env::var_os("PATH")?
        .to_string_lossy()
        .split(':')
        .map(|d| Path::new(d).join(tool))
        .find(|p| p.is_file())
        .map(|p| p.to_string_lossy().into_owned())
}

/// One phase of load: (its stats, the command that produced them).
async fn drive(
    args: &BenchArgs,
    wrk: Option<&str>,
    client: &reqwest::Client,
    base: &str,
    codes: Option<(&Path, &[String])>,
    step: &str,
) -> anyhow::Result<(StepStats, String)> {
    let secs = args.duration.as_secs().max(1);
    let conns = args.concurrency.max(1);
    if let Some(wrk) = wrk {
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
            .min(conns);
        let mut cmd = vec![
            wrk.to_owned(),
            format!("-t{threads}"),
            format!("-c{conns}"),
            format!("-d{secs}s"),
            "--latency".to_owned(),
        ];
        if let Some((script, _)) = codes {
            cmd.push("-s".into());
            cmd.push(script.to_string_lossy().into_owned());
        }
        cmd.push(if codes.is_some() {
            format!("{base}/")
        } else {
            base.to_owned()
        });
        let out = tokio::process::Command::new(&cmd[0])
            .args(&cmd[1..])
            .output()
            .await?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            anyhow::bail!(
                "wrk failed: {}{}",
                text,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        return Ok((parse_wrk(step, &text, secs), cmd.join(" ")));
    }
    let rec = Arc::new(Recorder::new());
    let urls: Arc<Vec<String>> = Arc::new(match codes {
        Some((_, c)) => c.iter().map(|c| format!("{base}/{c}")).collect(),
        None => vec![base.to_owned()],
    });
    let (r, c, u, name) = (rec.clone(), client.clone(), urls.clone(), step.to_owned());
    let wall = closed_loop(conns, args.duration, move |w, i| {
        let (rec, client, urls, name) = (r.clone(), c.clone(), u.clone(), name.clone());
        async move {
            let url =
                &urls[(super::search::spread(w as u64 * 1_000_003 + i) as usize) % urls.len()];
            let t = Instant::now();
            match client.get(url).send().await {
                Ok(resp) if resp.status().as_u16() < 500 => {
                    let _ = resp.bytes().await;
                    rec.ok(&name, t.elapsed());
                }
                _ => rec.error(&name),
            }
        }
    })
    .await;
    let stats = rec
        .stats(wall)
        .into_iter()
        .next()
        .ok_or_else(|| anyhow::anyhow!("no requests completed"))?;
    Ok((
        stats,
        format!("built-in client, {conns} connections, {secs} s"),
    ))
}

/// Reads wrk's `--latency` report.
fn parse_wrk(step: &str, text: &str, secs: u64) -> StepStats {
    let ms = |v: &str| -> f64 {
        let v = v.trim();
        let (num, unit) = v
            .find(|c: char| c.is_ascii_alphabetic())
            .map(|i| v.split_at(i))
            .unwrap_or((v, "ms"));
        let n: f64 = num.parse().unwrap_or(0.0);
        match unit {
            "us" => n / 1000.0,
            "s" => n * 1000.0,
            "m" => n * 60_000.0,
            _ => n,
        }
    };
    let pct = |p: &str| -> f64 {
        text.lines()
            .map(str::trim)
            .find(|l| l.starts_with(p))
            .and_then(|l| l.split_whitespace().nth(1))
            .map(ms)
            .unwrap_or(0.0)
    };
    let count: u64 = text
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    // "Socket errors: connect 0, read 1, write 0, timeout 2" and "Non-2xx or 3xx responses: 5".
    let errors: u64 = text
        .lines()
        .filter(|l| l.contains("Socket errors") || l.contains("Non-2xx"))
        .filter_map(|l| l.split_once(':').map(|(_, rest)| rest))
        .flat_map(|rest| {
            rest.split(|c: char| !c.is_ascii_digit())
                .filter_map(|n| n.parse::<u64>().ok())
                .collect::<Vec<_>>()
        })
        .sum();
    let rps = text
        .lines()
        .find(|l| l.starts_with("Requests/sec:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(count as f64 / secs as f64);
    let max = text
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("Latency"))
        .and_then(|l| l.split_whitespace().nth(3))
        .map(ms)
        .unwrap_or(0.0);
    StepStats {
        step: step.to_owned(),
        count,
        errors,
        throughput_per_sec: rps,
        p50_ms: pct("50%"),
        p90_ms: pct("90%"),
        p99_ms: pct("99%"),
        max_ms: max,
    }
}

#[cfg(test)]
mod tests {
    use super::parse_wrk;

    #[test]
    fn wrk_reports_are_read() {
        let text = "Running 10s test @ http://127.0.0.1:1/\n  2 threads and 64 connections\n  Thread Stats   Avg      Stdev     Max   +/- Stdev\n    Latency   521.00us  300.12us  12.30ms   90.00%\n    Req/Sec    60.00k     2.00k   70.00k    70.00%\n  Latency Distribution\n     50%  480.00us\n     75%  600.00us\n     90%  800.00us\n     99%    1.50ms\n  1200000 requests in 10.00s, 100.00MB read\n  Non-2xx or 3xx responses: 5\nRequests/sec: 120000.00\nTransfer/sec:     10.00MB\n";
        let s = parse_wrk("x", text, 10);
        assert_eq!(s.count, 1_200_000);
        assert_eq!(s.errors, 5);
        assert!((s.throughput_per_sec - 120_000.0).abs() < 1e-6);
        assert!((s.p50_ms - 0.48).abs() < 1e-9);
        assert!((s.p99_ms - 1.5).abs() < 1e-9);
        assert!((s.max_ms - 12.3).abs() < 1e-9);
    }
}
