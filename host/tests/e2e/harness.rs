//! What every end-to-end test needs: a real `tinystate serve` process on a free loopback port,
//! a small HTTP/1.1 client that can read a body incrementally and see trailers, and the guests.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("host/ has a parent").to_path_buf()
}

/// The `tinystate` binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_tinystate")
}

/// A running `tinystate serve`; killed when dropped. Derefs to a [`Client`] of it.
pub struct Server {
    child: Child,
    client: Client,
}

/// Talks HTTP to a server at `addr`.
#[derive(Clone)]
pub struct Client {
    /// The server's address.
    pub addr: SocketAddr,
    log: Arc<Mutex<String>>,
}

impl std::ops::Deref for Server {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

impl Server {
    /// A client for another thread.
    pub fn attach(addr: SocketAddr) -> Client {
        Client { addr, log: Arc::new(Mutex::new(String::new())) }
    }

    /// Starts `tinystate serve --addr 127.0.0.1:0 ARGS…` and waits until `GET /health` is 200.
    pub fn start(args: &[&str]) -> Server {
        let mut child = Command::new(bin())
            .args(["serve", "--addr", "127.0.0.1:0"])
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tinystate serve");
        let log = Arc::new(Mutex::new(String::new()));
        drain(child.stderr.take().expect("stderr"), log.clone());
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        let out_log = log.clone();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(first)) = lines.next() {
                let _ = tx.send(first);
            }
            for line in lines.map_while(Result::ok) {
                out_log.lock().unwrap().push_str(&format!("[stdout] {line}\n"));
            }
        });
        // Compiling a guest with a model in it takes a while on a cold compile cache.
        let first = match rx.recv_timeout(Duration::from_secs(300)) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                std::thread::sleep(Duration::from_millis(100));
                panic!("server printed no address; its log:\n{}", log.lock().unwrap());
            }
        };
        let addr = first
            .strip_prefix("listening on http://")
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("first stdout line is not 'listening on http://ADDR': {first}"));
        let server = Server { child, client: Client { addr, log } };
        let t0 = Instant::now();
        loop {
            if let Ok(r) = server.try_request("GET", "/health", &[], b"")
                && r.status == 200
            {
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(30), "/health never answered 200:\n{}", server.log());
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    /// The process id, to signal it.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the process to exit by itself.
    pub fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let t0 = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                return st;
            }
            assert!(t0.elapsed() < within, "server did not exit:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Client {
    /// Everything the server wrote to stderr (and stdout after the first line) so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// One request; panics if the connection fails.
    pub fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
        self.try_request(method, path, headers, body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}\nserver log:\n{}", self.log()))
    }

    /// One request.
    pub fn try_request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<Reply> {
        let mut s = self.open(method, path, headers, body)?;
        let mut body = Vec::new();
        while let Some(chunk) = s.next_chunk()? {
            body.extend_from_slice(&chunk);
        }
        Ok(Reply { status: s.status, headers: s.headers, body, trailers: s.trailers })
    }

    /// Starts a streamed `POST /v1/completions` of `body`, expects 200 and reads `events` of its
    /// server-sent events; the stream stays open (dropping it is the client going away).
    pub fn stream_events(&self, body: &serde_json::Value, events: usize) -> Streaming {
        let mut st = self
            .open(
                "POST",
                "/v1/completions",
                &[("content-type", "application/json")],
                body.to_string().as_bytes(),
            )
            .expect("open a streamed completion");
        assert_eq!(st.status, 200);
        let mut n = 0;
        st.sse(|_| {
            n += 1;
            n < events
        })
        .expect("read the first events");
        st
    }

    /// `POST path` with a JSON body.
    pub fn post_json(&self, path: &str, json: &serde_json::Value) -> Reply {
        let body = json.to_string();
        self.request("POST", path, &[("content-type", "application/json")], body.as_bytes())
    }

    /// Sends a request and reads the response head; the body is read by the caller.
    pub fn open(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<Streaming> {
        let mut tcp = TcpStream::connect(self.addr)?;
        // Long enough for a 256 KB prompt's prefill on a slow machine; the server's own
        // deadline (--timeout) bounds every request anyway.
        tcp.set_read_timeout(Some(Duration::from_secs(1800)))?;
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nhost: {}\r\nconnection: close\r\nte: trailers\r\n\
             content-length: {}\r\n",
            self.addr,
            body.len()
        );
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        tcp.write_all(head.as_bytes())?;
        // A server may answer (413, 503) and close before it has read the whole body: the
        // write then fails, but the answer is still there to read.
        let _ = tcp.write_all(body);
        Streaming::read_head(BufReader::new(tcp))
    }

    /// The value of an unlabelled metric (or a labelled one, `name{label="v"}`), 0 if absent.
    pub fn metric(&self, series: &str) -> f64 {
        let text = self.request("GET", "/metrics", &[], b"").text();
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
            .map(|v| v.trim().parse().expect("metric value"))
            .unwrap_or(0.0)
    }

    /// Polls `series` until `pred` holds (or panics after `within`).
    pub fn wait_metric(&self, series: &str, within: Duration, pred: impl Fn(f64) -> bool) -> f64 {
        let t0 = Instant::now();
        loop {
            let v = self.metric(series);
            if pred(v) {
                return v;
            }
            assert!(t0.elapsed() < within, "{series} stayed at {v}\nserver log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn drain(r: impl Read + Send + 'static, log: Arc<Mutex<String>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines().map_while(Result::ok) {
            log.lock().unwrap().push_str(&(line + "\n"));
        }
    });
}

/// A whole response.
#[derive(Debug)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Headers, names lower-case.
    pub headers: Vec<(String, String)>,
    /// Body, de-chunked.
    pub body: Vec<u8>,
    /// Trailers (chunked responses only), names lower-case.
    pub trailers: Vec<(String, String)>,
}

impl Reply {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        find(&self.headers, name)
    }

    /// A trailer's value.
    pub fn trailer(&self, name: &str) -> Option<&str> {
        find(&self.trailers, name)
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics with the body if it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text()))
    }

    /// Asserts an OpenAI error body: `{"error": {"message": str, "type": str, "param", "code"}}`.
    pub fn assert_openai_error(&self, status: u16) -> serde_json::Value {
        assert_eq!(self.status, status, "body: {}", self.text());
        let v = self.json();
        let e = &v["error"];
        assert!(e["message"].is_string(), "no error.message: {v}");
        assert!(e["type"].is_string(), "no error.type: {v}");
        assert!(e.get("param").is_some(), "no error.param: {v}");
        assert!(e.get("code").is_some(), "no error.code: {v}");
        v
    }
}

fn find<'a>(list: &'a [(String, String)], name: &str) -> Option<&'a str> {
    list.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
}

/// A response whose body is read chunk by chunk as it arrives.
pub struct Streaming {
    r: BufReader<TcpStream>,
    /// Status code.
    pub status: u16,
    /// Headers, names lower-case.
    pub headers: Vec<(String, String)>,
    /// Trailers, once the body has ended.
    pub trailers: Vec<(String, String)>,
    framing: Framing,
}

enum Framing {
    Chunked,
    Length(u64),
    UntilClose,
    Done,
}

impl Streaming {
    fn read_head(mut r: BufReader<TcpStream>) -> std::io::Result<Self> {
        let status_line = read_line(&mut r)?;
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad(format!("status line: {status_line:?}")))?;
        let headers = read_fields(&mut r)?;
        let framing = if find(&headers, "transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            Framing::Chunked
        } else if let Some(n) = find(&headers, "content-length") {
            Framing::Length(n.parse().map_err(|_| bad("content-length".into()))?)
        } else {
            Framing::UntilClose
        };
        Ok(Self { r, status, headers, trailers: Vec::new(), framing })
    }

    /// The next piece of the body as it arrives; `None` at its end.
    pub fn next_chunk(&mut self) -> std::io::Result<Option<Vec<u8>>> {
        match self.framing {
            Framing::Done | Framing::Length(0) => Ok(None),
            Framing::Length(n) => {
                let mut buf = vec![0; n.min(64 * 1024) as usize];
                let got = self.r.read(&mut buf)?;
                if got == 0 {
                    return Err(bad("body shorter than content-length".into()));
                }
                buf.truncate(got);
                self.framing = Framing::Length(n - got as u64);
                Ok(Some(buf))
            }
            Framing::UntilClose => {
                let mut buf = vec![0; 64 * 1024];
                let got = self.r.read(&mut buf)?;
                if got == 0 {
                    self.framing = Framing::Done;
                    return Ok(None);
                }
                buf.truncate(got);
                Ok(Some(buf))
            }
            Framing::Chunked => {
                let line = read_line(&mut self.r)?;
                let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
                    .map_err(|_| bad(format!("chunk size line {line:?}")))?;
                if size == 0 {
                    self.trailers = read_fields(&mut self.r)?;
                    self.framing = Framing::Done;
                    return Ok(None);
                }
                let mut buf = vec![0; size];
                self.r.read_exact(&mut buf)?;
                let crlf = read_line(&mut self.r)?;
                if !crlf.is_empty() {
                    return Err(bad("chunk not followed by CRLF".into()));
                }
                Ok(Some(buf))
            }
        }
    }

    /// Reads server-sent events until the body ends, calling `each` with every `data:` payload;
    /// `each` returns false to stop early (the connection is then dropped by the caller).
    pub fn sse(&mut self, mut each: impl FnMut(&str) -> bool) -> std::io::Result<()> {
        let mut pending = String::new();
        while let Some(chunk) = self.next_chunk()? {
            pending.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = pending.find("\n\n") {
                let event: String = pending.drain(..end + 2).collect();
                for line in event.lines() {
                    if let Some(data) = line.strip_prefix("data:")
                        && !each(data.trim_start())
                    {
                        return Ok(());
                    }
                }
            }
        }
        Ok(())
    }
}

fn read_line(r: &mut BufReader<TcpStream>) -> std::io::Result<String> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed"));
    }
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

fn read_fields(r: &mut BufReader<TcpStream>) -> std::io::Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    loop {
        let line = read_line(r)?;
        if line.is_empty() {
            return Ok(out);
        }
        let (k, v) = line.split_once(':').ok_or_else(|| bad(format!("field line {line:?}")))?;
        out.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
    }
}

fn bad(msg: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg)
}

/// Runs cargo for a wasm build with the outer cargo's variables removed.
fn cargo_wasm_build(manifest: &Path, target_dir: &Path) {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--locked", "--release", "--target", "wasm32-wasip2", "--manifest-path"])
        .arg(manifest)
        .arg("--target-dir")
        .arg(target_dir);
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        if (k.starts_with("CARGO_") && k != "CARGO_HOME") || k.starts_with("RUSTFLAGS") {
            cmd.env_remove(&k);
        }
    }
    let status = cmd.status().expect("run cargo");
    assert!(status.success(), "building {} for wasm32-wasip2 failed", manifest.display());
}

/// The probe guest (host/tests/fixtures/probe-guest), built once per test run.
pub fn probe_guest() -> &'static str {
    static WASM: OnceLock<String> = OnceLock::new();
    WASM.get_or_init(|| {
        let root = root();
        let target = root.join("target/fixtures");
        cargo_wasm_build(&root.join("host/tests/fixtures/probe-guest/Cargo.toml"), &target);
        target.join("wasm32-wasip2/release/probe_guest.wasm").display().to_string()
    })
}

/// Arguments that select the real guest: `--guest $TINYSTATE_TEST_GUEST` when that is set
/// (e.g. a guest built elsewhere), else none, so the binary's built-in guest is served. A
/// binary built without `guest/` has none: the server then refuses to start and the test fails.
pub fn real_guest_args() -> Vec<String> {
    match std::env::var("TINYSTATE_TEST_GUEST") {
        Ok(p) if !p.is_empty() => vec!["--guest".into(), p],
        _ => Vec::new(),
    }
}

/// Starts a server on the real guest with extra `args`.
pub fn real_server(args: &[&str]) -> Server {
    let mut all: Vec<String> = real_guest_args();
    all.extend(args.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    Server::start(&refs)
}

/// The model the built-in guest embeds (the repository's default).
pub fn default_model() -> PathBuf {
    match std::env::var("TINYSTATE_TEST_MODEL") {
        Ok(p) if !p.is_empty() => PathBuf::from(p),
        _ => root().join("models/default-q8_0.gguf"),
    }
}
