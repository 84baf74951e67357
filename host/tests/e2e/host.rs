//! What the host does whatever the guest: traps, memory cap, deadline, concurrency limit,
//! client disconnects, metrics, trailers, graceful shutdown. Driven through the probe guest
//! (host/tests/fixtures/probe-guest), which can trap, grow memory, spin and stream on request.

use std::time::{Duration, Instant};

use crate::harness::{Server, probe_guest};

fn probe(extra: &[&str]) -> Server {
    let mut args = vec!["--guest", probe_guest()];
    args.extend_from_slice(extra);
    Server::start(&args)
}

#[test]
fn trap_is_500_for_that_request_only() {
    let s = probe(&[]);
    let r = s.request("GET", "/trap", &[], b"");
    let v = r.assert_openai_error(500);
    assert_eq!(v["error"]["code"], "guest_trap");
    assert!(r.header("x-request-id").is_some());
    let ok = s.request("GET", "/health", &[], b"");
    assert_eq!(ok.status, 200);
    assert_eq!(ok.text(), "ok");
    s.wait_metric("tinystate_active_instances", Duration::from_secs(5), |v| v == 0.0);
    assert_eq!(s.metric("tinystate_guest_traps_total"), 1.0);
    assert_eq!(s.metric("tinystate_requests_total{status=\"500\"}"), 1.0);
}

#[test]
fn memory_cap_is_500_then_next_request_fine() {
    let s = probe(&["--memory-limit", "16MiB"]);
    let small = s.request("GET", "/grow?mib=4", &[], b"");
    assert_eq!(small.status, 200, "{}", small.text());
    let r = s.request("GET", "/grow?mib=64", &[], b"");
    let v = r.assert_openai_error(500);
    assert_eq!(v["error"]["code"], "memory_limit_exceeded", "{v}");
    assert_eq!(s.request("GET", "/grow?mib=4", &[], b"").status, 200);
}

#[test]
fn peak_memory_per_request_in_trailer_and_metrics() {
    let s = probe(&[]);
    let base = s.request("GET", "/health", &[], b"");
    let base_peak: u64 =
        base.trailer("x-tinystate-peak-memory-bytes").expect("peak trailer").parse().unwrap();
    assert!(base_peak > 0);
    let big = s.request("GET", "/grow?mib=8", &[], b"");
    let big_peak: u64 = big.trailer("x-tinystate-peak-memory-bytes").unwrap().parse().unwrap();
    assert!(big_peak >= base_peak + (8 << 20), "{base_peak} -> {big_peak}");
    // The same figure reaches /metrics once the request is counted as finished.
    s.wait_metric("tinystate_requests_finished_total", Duration::from_secs(5), |v| v >= 3.0);
    assert_eq!(s.metric("tinystate_last_request_peak_memory_bytes"), big_peak as f64);
    // And a fresh instance starts from the image again: nothing is kept between requests.
    let again = s.request("GET", "/health", &[], b"");
    assert_eq!(again.trailer("x-tinystate-peak-memory-bytes").unwrap(), base_peak.to_string());
    let us: u64 = again.header("x-tinystate-instantiate-us").expect("instantiate header").parse().unwrap();
    assert!(us > 0 && us < 1_000_000, "instantiate {us} µs");
}

#[test]
fn deadline_interrupts_a_busy_guest_with_504() {
    let s = probe(&["--timeout", "0.5"]);
    let t0 = Instant::now();
    let r = s.request("GET", "/spin?ms=10000", &[], b"");
    let v = r.assert_openai_error(504);
    assert_eq!(v["error"]["code"], "timeout");
    assert!(t0.elapsed() < Duration::from_secs(5), "took {:?}", t0.elapsed());
    assert_eq!(s.request("GET", "/spin?ms=10", &[], b"").status, 200);
}

#[test]
fn busy_guests_do_not_block_metrics_or_others() {
    // Two guests computing without pause on a 2-core machine: the host still answers.
    let s = probe(&["--max-concurrency", "4"]);
    let addr = s.addr;
    let spinners: Vec<_> = (0..2)
        .map(|_| {
            std::thread::spawn(move || {
                let s2 = crate::harness::Server::attach(addr);
                s2.request("GET", "/spin?ms=1500", &[], b"").status
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let t0 = Instant::now();
    assert_eq!(s.request("GET", "/health", &[], b"").status, 200);
    assert!(t0.elapsed() < Duration::from_millis(1000), "health took {:?}", t0.elapsed());
    for h in spinners {
        assert_eq!(h.join().unwrap(), 200);
    }
}

#[test]
fn concurrency_limit_is_503_with_retry_after() {
    let s = probe(&["--max-concurrency", "1"]);
    let mut slow = s.open("GET", "/stream?n=20&ms=50", &[], b"").expect("open stream");
    assert_eq!(slow.status, 200);
    let r = s.request("GET", "/health", &[], b"");
    let v = r.assert_openai_error(503);
    assert_eq!(v["error"]["code"], "server_overloaded");
    assert_eq!(r.header("retry-after"), Some("1"));
    let mut events = 0;
    slow.sse(|_| {
        events += 1;
        true
    })
    .unwrap();
    assert_eq!(events, 21);
    s.wait_metric("tinystate_active_instances", Duration::from_secs(5), |v| v == 0.0);
    assert_eq!(s.request("GET", "/health", &[], b"").status, 200);
    assert_eq!(s.metric("tinystate_rejected_total"), 1.0);
}

#[test]
fn client_disconnect_mid_stream_drops_the_instance() {
    let s = probe(&[]);
    let mut st = s.open("GET", "/stream?n=100000&ms=10", &[], b"").expect("open");
    let mut seen = 0;
    st.sse(|_| {
        seen += 1;
        seen < 3
    })
    .unwrap();
    assert_eq!(s.metric("tinystate_active_instances"), 1.0);
    drop(st);
    s.wait_metric("tinystate_active_instances", Duration::from_secs(5), |v| v == 0.0);
    s.wait_metric("tinystate_requests_finished_total", Duration::from_secs(5), |v| v >= 1.0);
    assert!(
        s.log().contains("outcome=\"client_gone\"") || s.log().contains("outcome=client_gone"),
        "{}",
        s.log()
    );
}

#[test]
fn token_counts_from_trailers_reach_metrics() {
    let s = probe(&[]);
    let r = s.request("GET", "/tokens?in=7&out=11", &[], b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.trailer("x-tinystate-prompt-tokens"), Some("7"));
    assert_eq!(r.trailer("x-tinystate-completion-tokens"), Some("11"));
    assert!(r.trailer("x-tinystate-peak-memory-bytes").is_some());
    s.wait_metric("tinystate_requests_finished_total", Duration::from_secs(5), |v| v >= 2.0);
    assert_eq!(s.metric("tinystate_prompt_tokens_total"), 7.0);
    assert_eq!(s.metric("tinystate_completion_tokens_total"), 11.0);
}

#[test]
fn metrics_are_prometheus_text() {
    let s = probe(&[]);
    s.request("GET", "/health", &[], b"");
    let r = s.request("GET", "/metrics", &[], b"");
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/plain; version=0.0.4"));
    let t = r.text();
    for name in [
        "tinystate_requests_total",
        "tinystate_active_instances",
        "tinystate_instantiate_seconds",
        "tinystate_time_to_first_byte_seconds",
        "tinystate_request_peak_memory_bytes",
        "tinystate_prompt_tokens_total",
        "tinystate_completion_tokens_total",
    ] {
        assert!(t.contains(&format!("# TYPE {name} ")), "{name} missing:\n{t}");
    }
    // Server::start's /health and ours.
    assert!(t.contains("tinystate_requests_total{status=\"200\"} 2"), "{t}");
    assert!(t.contains("tinystate_instantiate_seconds_count 2"), "{t}");
    assert!(t.contains("tinystate_instantiate_seconds_bucket{le=\"+Inf\"} 2"), "{t}");
}

#[test]
fn request_body_streams_to_the_guest() {
    let s = probe(&[]);
    let body = vec![b'x'; 3 << 20];
    let r = s.request("POST", "/echo", &[], &body);
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), (3 << 20).to_string());
}

#[test]
fn sigterm_lets_in_flight_requests_finish() {
    let mut s = probe(&[]);
    let mut st = s.open("GET", "/stream?n=10&ms=100", &[], b"").expect("open");
    assert_eq!(st.status, 200);
    let kill = std::process::Command::new("kill").args(["-TERM", &s.pid().to_string()]).status();
    assert!(kill.unwrap().success());
    let mut events = Vec::new();
    st.sse(|d| {
        events.push(d.to_owned());
        true
    })
    .unwrap();
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{events:?}");
    assert_eq!(events.len(), 11);
    let status = s.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{status:?}\n{}", s.log());
    assert!(std::net::TcpStream::connect(s.addr).is_err(), "still accepting after shutdown");
}

#[test]
fn no_guest_and_bad_guest_fail_at_start() {
    let out = std::process::Command::new(crate::harness::bin())
        .args(["serve", "--addr", "127.0.0.1:0", "--guest", "/nonexistent.wasm"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read guest"));
}

#[test]
fn client_gone_before_the_response_head_drops_the_instance() {
    let s = probe(&[]);
    let addr = s.addr;
    let t0 = Instant::now();
    let h = std::thread::spawn(move || {
        use std::io::Write;
        let mut tcp = std::net::TcpStream::connect(addr).unwrap();
        let req = format!("GET /spin?ms=5000 HTTP/1.1\r\nhost: {addr}\r\n\r\n");
        tcp.write_all(req.as_bytes()).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        // Dropped: the connection closes while the guest is still computing.
    });
    h.join().unwrap();
    s.wait_metric("tinystate_active_instances", Duration::from_secs(3), |v| v == 0.0);
    assert!(t0.elapsed() < Duration::from_secs(3), "instance lived {:?}", t0.elapsed());
    s.wait_metric("tinystate_requests_total{status=\"499\"}", Duration::from_secs(3), |v| v == 1.0);
}
