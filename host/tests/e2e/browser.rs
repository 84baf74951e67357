//! The playground page (`GET /`) in a real browser: headless Debian Chromium, driven by
//! Playwright (host/tests/browser/playground.py), streams a completion from the real guest.
//! Both are installed by scripts/setup; without them this test fails, it is never skipped.

use std::process::Command;

use serde_json::{Value, json};

use crate::harness::{real_server, root};

const PROMPT: &str = "It is a truth universally acknowledged";
const MAX_TOKENS: u32 = 24;

#[test]
fn playground_streams_a_completion_in_headless_chromium() {
    let s = real_server(&[]);
    let script = root().join("host/tests/browser/playground.py");
    let url = format!("http://{}/", s.addr);
    let out = Command::new("python3")
        .arg(&script)
        .args([url.as_str(), PROMPT, &MAX_TOKENS.to_string()])
        .output()
        .expect("run python3 host/tests/browser/playground.py (scripts/setup installs playwright)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "playground.py failed ({}); run scripts/setup for chromium and playwright.\nstdout: {stdout}\nstderr: {}\nserver log:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        s.log()
    );
    let page: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    let status = page["status"].as_str().unwrap_or_default();
    assert!(status.starts_with("done (length)"), "the page did not finish by length: {page}");
    assert!(status.contains(&format!("+ {MAX_TOKENS} generated tokens")), "usage not shown: {page}");
    assert_eq!(page["prompt"], PROMPT, "{page}");
    assert!(
        page["chunks"].as_u64().unwrap_or(0) > 1,
        "the output arrived in one piece, not streamed: {page}"
    );

    // The page's greedy text is the API's greedy text.
    let model = page["model"].as_str().expect("model id shown");
    let body = json!({ "model": model, "prompt": PROMPT, "max_tokens": MAX_TOKENS, "temperature": 0 });
    let r = s.post_json("/v1/completions", &body);
    assert_eq!(r.status, 200, "{}", r.text());
    let api = r.json()["choices"][0]["text"].as_str().expect("choices[0].text").to_owned();
    assert_eq!(page["generated"].as_str(), Some(api.as_str()), "{page}");
}
