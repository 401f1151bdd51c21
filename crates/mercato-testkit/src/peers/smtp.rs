//! An SMTP sink: enough of RFC 5321 for lettre (EHLO/HELO, MAIL, RCPT, DATA with dot-unstuffing,
//! RSET, NOOP, QUIT) on a loopback port. It records every accepted message and can be told to
//! answer `451` (transient) for the next N messages or `550` (permanent) for all.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// A message the sink accepted.
#[derive(Clone, Debug)]
pub struct SmtpMessage {
    pub from: String,
    pub to: Vec<String>,
    /// The raw message (headers and body), dot-unstuffed.
    pub data: String,
}

impl SmtpMessage {
    /// The value of a header (first occurrence, case-insensitive name).
    pub fn header(&self, name: &str) -> Option<String> {
        let prefix = format!("{}:", name.to_ascii_lowercase());
        self.data
            .lines()
            .take_while(|l| !l.is_empty())
            .find(|l| l.to_ascii_lowercase().starts_with(&prefix))
            .map(|l| l[prefix.len()..].trim().to_owned())
    }

    /// The body (after the blank line).
    pub fn body(&self) -> String {
        self.data
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default()
    }
}

#[derive(Default)]
struct State {
    messages: Mutex<Vec<SmtpMessage>>,
    fail_next: AtomicU32,
    reject_all: AtomicBool,
    transactions: AtomicU32,
}

/// A running SMTP sink (stops when dropped).
#[derive(Clone)]
pub struct SmtpSink {
    /// `smtp://127.0.0.1:<port>`
    pub url: String,
    state: Arc<State>,
    task: Arc<tokio::task::AbortHandle>,
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        if Arc::strong_count(&self.task) == 1 {
            self.task.abort();
        }
    }
}

impl SmtpSink {
    pub async fn start() -> SmtpSink {
        let listener = match TcpListener::bind("127.0.0.1:0").await {
            Ok(l) => l,
            Err(e) => panic!("binding the SMTP sink: {e}"),
        };
        let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
        let state = Arc::new(State::default());
        let s = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let s = s.clone();
                tokio::spawn(async move {
                    let _ = session(sock, s).await;
                });
            }
        });
        SmtpSink {
            url: format!("smtp://127.0.0.1:{port}"),
            state,
            task: Arc::new(task.abort_handle()),
        }
    }

    /// Accepted messages so far.
    pub fn messages(&self) -> Vec<SmtpMessage> {
        self.state
            .messages
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default()
    }

    /// Answers 451 to the next `n` mail transactions.
    pub fn fail_next(&self, n: u32) {
        self.state.fail_next.store(n, Ordering::SeqCst);
    }

    /// Answers 550 to every transaction (a permanent refusal) while `on`.
    pub fn reject_all(&self, on: bool) {
        self.state.reject_all.store(on, Ordering::SeqCst);
    }

    /// Mail transactions attempted (accepted or not).
    pub fn transactions(&self) -> u32 {
        self.state.transactions.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` messages were accepted.
    pub async fn wait_for(&self, n: usize, timeout: std::time::Duration) -> Vec<SmtpMessage> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let m = self.messages();
            if m.len() >= n || tokio::time::Instant::now() >= deadline {
                return m;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

fn arg(line: &str) -> String {
    line.split_once(':')
        .map(|(_, v)| v.trim().trim_start_matches('<').trim_end_matches('>'))
        .and_then(|v| v.split('>').next())
        .unwrap_or("")
        .to_owned()
}

async fn session(sock: tokio::net::TcpStream, s: Arc<State>) -> std::io::Result<()> {
    let (r, mut w) = sock.into_split();
    let mut r = BufReader::new(r);
    w.write_all(b"220 sink.test ESMTP ready\r\n").await?;
    let mut from = String::new();
    let mut to = Vec::new();
    let mut failing = false;
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let cmd = line.trim_end().to_owned();
        let upper = cmd.to_ascii_uppercase();
        let reply: &[u8] = if upper.starts_with("EHLO") {
            b"250-sink.test\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n"
        } else if upper.starts_with("HELO") {
            b"250 sink.test\r\n"
        } else if upper.starts_with("MAIL FROM") {
            s.transactions.fetch_add(1, Ordering::SeqCst);
            from = arg(&cmd);
            to.clear();
            failing = false;
            if s.reject_all.load(Ordering::SeqCst) {
                failing = true;
                b"550 5.7.1 rejected by the sink\r\n"
            } else if s
                .fail_next
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                failing = true;
                b"451 4.3.0 try again later\r\n"
            } else {
                b"250 OK\r\n"
            }
        } else if upper.starts_with("RCPT TO") {
            if failing {
                b"503 5.5.1 no valid sender\r\n"
            } else {
                to.push(arg(&cmd));
                b"250 OK\r\n"
            }
        } else if upper == "DATA" {
            if failing || to.is_empty() {
                b"503 5.5.1 no recipients\r\n"
            } else {
                w.write_all(b"354 end with <CRLF>.<CRLF>\r\n").await?;
                let mut data = String::new();
                loop {
                    line.clear();
                    if r.read_line(&mut line).await? == 0 {
                        return Ok(());
                    }
                    if line == ".\r\n" || line == ".\n" {
                        break;
                    }
                    let l = line.strip_prefix('.').unwrap_or(&line);
                    data.push_str(l);
                }
                if let Ok(mut m) = s.messages.lock() {
                    m.push(SmtpMessage {
                        from: from.clone(),
                        to: to.clone(),
                        data,
                    });
                }
                to.clear();
                b"250 OK queued\r\n"
            }
        } else if upper == "RSET" {
            from.clear();
            to.clear();
            failing = false;
            b"250 OK\r\n"
        } else if upper == "NOOP" {
            b"250 OK\r\n"
        } else if upper == "QUIT" {
            w.write_all(b"221 bye\r\n").await?;
            return Ok(());
        } else {
            b"502 5.5.2 command not implemented\r\n"
        };
        w.write_all(reply).await?;
    }
}
