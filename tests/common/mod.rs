//! Shared helpers for integration tests.
#![allow(dead_code, unreachable_pub)]

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

/// A running example binary, killed on drop.
pub struct Example {
    child: Child,
    /// `http://127.0.0.1:PORT`
    pub base: String,
    /// Lines printed to stdout after the `listening on` line, as they arrive.
    pub stdout: mpsc::Receiver<String>,
    /// Lines printed to stdout before the `listening on` line.
    pub preamble: Vec<String>,
}

/// Path of an example binary built by `cargo test` (examples are built with the tests).
pub fn example_path(name: &str) -> PathBuf {
    let mut dir = std::env::current_exe().expect("test binary path");
    dir.pop(); // the test binary
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir.join("examples").join(name)
}

impl Example {
    /// Starts example `name` on 127.0.0.1:0 with extra environment, and waits for its
    /// `listening on <addr>` line (at most 60 s).
    pub fn spawn(name: &str, env: &[(&str, &str)]) -> Self {
        let path = example_path(name);
        assert!(path.exists(), "{} not built: run the tests with `cargo test`", path.display());
        let mut command = Command::new(path);
        command
            .env("BIND_ADDR", "127.0.0.1:0")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .stdin(Stdio::null());
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("spawn example");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut before = Vec::new();
        let addr = loop {
            match rx.recv_timeout(Duration::from_secs(60)) {
                Ok(line) => {
                    if let Some(addr) = line.split("listening on ").nth(1) {
                        break addr.trim().to_owned();
                    }
                    before.push(line);
                }
                Err(_) => {
                    let _ = child.kill();
                    panic!("example {name} never printed `listening on`; it printed {before:?}");
                }
            }
        };
        Self { child, base: format!("http://{addr}"), stdout: rx, preamble: before }
    }

    /// `base` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }
}

/// A server on 127.0.0.1 that accepts connections and never answers (an identity provider
/// or authorization server that hangs); returns its address. It lives until the test binary
/// exits.
pub fn silent_server() -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for connection in listener.incoming() {
            held.push(connection);
        }
    });
    addr
}

/// A current-thread Tokio runtime with time and I/O, for tests that drop one mid-call.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

impl Drop for Example {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

mod shared;

#[allow(unused_imports)] // not every test binary uses every helper
pub use self::shared::{capture_events, redis_url, unique_prefix};
