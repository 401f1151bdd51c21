//! A fresh PostgreSQL database per test, dropped afterwards.

use sqlx::{Connection, Executor, PgConnection};

/// `MERCATO_TEST_POSTGRES_URL` (a maintenance database URL, e.g. `postgres://postgres@127.0.0.1/postgres`).
pub fn admin_url() -> Option<String> {
    std::env::var("MERCATO_TEST_POSTGRES_URL")
        .ok()
        .filter(|s| !s.trim().is_empty())
}

pub struct TestDatabase {
    admin: String,
    name: String,
    pub url: String,
}

fn with_database(url: &str, name: &str) -> String {
    // Replace the path (database name) of the URL, keeping the query string.
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let host_end = base[scheme_end..]
        .find('/')
        .map(|i| scheme_end + i)
        .unwrap_or(base.len());
    let mut out = format!("{}/{}", &base[..host_end], name);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

impl TestDatabase {
    pub async fn create(admin: &str) -> anyhow::Result<TestDatabase> {
        let name = format!("mercato_test_{}", mercato_kernel::id::random_hex(8));
        let mut conn = PgConnection::connect(admin).await?;
        conn.execute(format!("CREATE DATABASE \"{name}\"").as_str())
            .await?;
        let _ = conn.close().await;
        Ok(TestDatabase {
            url: with_database(admin, &name),
            admin: admin.to_owned(),
            name,
        })
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let admin = self.admin.clone();
        let name = self.name.clone();
        // Drop runs outside any async context we could await in: use a short-lived runtime on
        // a helper thread. WITH (FORCE) ends the app's pooled connections.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok(mut conn) = PgConnection::connect(&admin).await {
                    let _ = conn
                        .execute(
                            format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)").as_str(),
                        )
                        .await;
                    let _ = conn.close().await;
                }
            });
        })
        .join();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn database_name_is_replaced() {
        assert_eq!(
            super::with_database("postgres://postgres@127.0.0.1:5432/postgres", "x"),
            "postgres://postgres@127.0.0.1:5432/x"
        );
        assert_eq!(
            super::with_database("postgres://u:p@h/db?sslmode=disable", "x"),
            "postgres://u:p@h/x?sslmode=disable"
        );
        assert_eq!(super::with_database("postgres://h", "x"), "postgres://h/x");
    }
}
