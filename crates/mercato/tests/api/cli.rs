//! The command line: `admin create-user`, `migrate`, and graceful shutdown of `serve`.

use mercato_testkit::spawn_app_with;
use std::process::Command;
use std::time::Duration;

fn mercato() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_mercato"));
    // The CLI tests always use SQLite in their own data dir.
    c.env_remove("MERCATO_DATABASE_URL");
    c
}

#[tokio::test]
async fn admin_create_user_makes_an_admin_that_can_sign_in() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let out = mercato()
        .args(["--data-dir"])
        .arg(dir.path())
        .args([
            "admin",
            "create-user",
            "--email",
            "Root@Example.com",
            "--password",
            "correct horse battery",
            "--role",
            "admin",
        ])
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("created admin root@example.com"));

    // Same again: a clear error, non-zero exit.
    let again = mercato()
        .args(["--data-dir"])
        .arg(dir.path())
        .args([
            "admin",
            "create-user",
            "--email",
            "root@example.com",
            "--password",
            "correct horse battery",
            "--role",
            "admin",
        ])
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));

    let bad = mercato()
        .args(["--data-dir"])
        .arg(dir.path())
        .args([
            "admin",
            "create-user",
            "--email",
            "x@example.com",
            "--password",
            "correct horse battery",
            "--role",
            "god",
        ])
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!bad.status.success());

    // The server on the same data dir (no explicit secret: the persisted one) sees the admin.
    let path = dir.path().to_path_buf();
    let app = spawn_app_with(move |s| {
        s.database_url = None;
        s.data_dir = path;
        s.jwt_secret = None;
    })
    .await;
    let r = app
        .api
        .login("root@example.com", "correct horse battery")
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["user"]["role"], "admin");
    let admin = app
        .api
        .with_token(r.body["access_token"].as_str().unwrap_or_default());
    assert_eq!(admin.get("/admin/users").await.status, 200);
}

#[tokio::test]
async fn serve_answers_healthz_and_exits_zero_on_sigterm() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        l.local_addr().map(|a| a.port()).unwrap_or(0)
    };
    let mut child = mercato()
        .args(["--data-dir"])
        .arg(dir.path())
        .args(["serve", "--addr", &format!("127.0.0.1:{port}")])
        .env("MERCATO_LOG_LEVEL", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    let client = mercato_testkit::Client::new(&format!("http://127.0.0.1:{port}"));
    let mut up = false;
    for _ in 0..1200 {
        if let Ok(r) = client
            .http
            .get(format!("http://127.0.0.1:{port}/healthz"))
            .send()
            .await
        {
            up = r.status().is_success();
            if up {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(up, "serve never answered /healthz");
    let migrate = mercato()
        .args(["--data-dir"])
        .arg(dir.path())
        .arg("migrate")
        .output();
    assert!(
        migrate.is_ok_and(|o| o.status.success()),
        "migrate works beside a running server"
    );
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    assert!(killed.is_ok_and(|s| s.success()));
    let mut status = None;
    for _ in 0..1200 {
        if let Ok(Some(s)) = child.try_wait() {
            status = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = status.unwrap_or_else(|| {
        let _ = child.kill();
        panic!("serve did not stop on SIGTERM")
    });
    assert!(status.success(), "exit status {status:?}");
}
