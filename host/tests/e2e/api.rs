//! The OpenAI-compatible API of the real guest with the real default model, through a real
//! `tinystate serve`. The guest is the one built into the binary (guest/, by host/build.rs) or
//! `$TINYSTATE_TEST_GUEST`; without either these tests fail, they are never skipped.

use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{Client, bin, default_model, real_server};

const PROMPT: &str = "Once upon a time, there was a little";

fn model_id(s: &Client) -> String {
    let r = s.request("GET", "/v1/models", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["object"], "list", "{v}");
    v["data"][0]["id"].as_str().unwrap_or_else(|| panic!("no model id in {v}")).to_owned()
}

fn complete(s: &Client, extra: Value) -> (Value, crate::harness::Reply) {
    let mut body = json!({ "model": model_id(s), "prompt": PROMPT, "max_tokens": 16, "temperature": 0 });
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    let r = s.post_json("/v1/completions", &body);
    assert_eq!(r.status, 200, "{}", r.text());
    (r.json(), r)
}

fn text_of(v: &Value) -> String {
    v["choices"][0]["text"].as_str().unwrap_or_else(|| panic!("no choices[0].text: {v}")).to_owned()
}

#[test]
fn health_and_models() {
    let s = real_server(&[]);
    assert_eq!(s.request("GET", "/health", &[], b"").status, 200);
    assert!(!model_id(&s).is_empty());
}

#[test]
fn completion_has_openai_shape_and_usage() {
    let s = real_server(&[]);
    let (v, r) = complete(&s, json!({ "max_tokens": 8 }));
    assert_eq!(v["object"], "text_completion", "{v}");
    assert!(v["id"].is_string() && v["created"].is_number() && v["model"].is_string(), "{v}");
    let finish = v["choices"][0]["finish_reason"].as_str().unwrap();
    assert!(finish == "stop" || finish == "length", "{v}");
    let u = &v["usage"];
    let (p, c, t) = (
        u["prompt_tokens"].as_u64().unwrap(),
        u["completion_tokens"].as_u64().unwrap(),
        u["total_tokens"].as_u64().unwrap(),
    );
    assert!(p > 0 && c > 0 && c <= 8, "{v}");
    assert_eq!(t, p + c);
    if finish == "length" {
        assert_eq!(c, 8);
    }
    // The host contract: the guest reports the same counts in headers or trailers.
    let hdr = |n: &str| r.header(n).or(r.trailer(n)).map(str::to_owned);
    assert_eq!(
        hdr("x-tinystate-prompt-tokens"),
        Some(p.to_string()),
        "headers {:?} trailers {:?}",
        r.headers,
        r.trailers
    );
    assert_eq!(hdr("x-tinystate-completion-tokens"), Some(c.to_string()));
    s.wait_metric("tinystate_requests_finished_total", Duration::from_secs(5), |n| n >= 3.0);
    assert!(s.metric("tinystate_completion_tokens_total") >= c as f64);
}

#[test]
fn streaming_completion_matches_non_streaming() {
    let s = real_server(&[]);
    let (v, _) = complete(&s, json!({ "max_tokens": 24 }));
    let whole = text_of(&v);
    let body = json!({ "model": model_id(&s), "prompt": PROMPT, "max_tokens": 24, "temperature": 0, "stream": true });
    let mut st = s
        .open("POST", "/v1/completions", &[("content-type", "application/json")], body.to_string().as_bytes())
        .unwrap();
    assert_eq!(st.status, 200);
    let ct = st.headers.iter().find(|(k, _)| k == "content-type").map(|(_, v)| v.clone()).unwrap_or_default();
    assert!(ct.starts_with("text/event-stream"), "content-type {ct}");
    let mut pieces = String::new();
    let mut last = String::new();
    let mut finish = None;
    st.sse(|data| {
        last = data.to_owned();
        if data != "[DONE]" {
            let ev: Value = serde_json::from_str(data).unwrap_or_else(|e| panic!("event {data}: {e}"));
            assert_eq!(ev["object"], "text_completion", "{ev}");
            pieces.push_str(ev["choices"][0]["text"].as_str().unwrap_or(""));
            if let Some(f) = ev["choices"][0]["finish_reason"].as_str() {
                finish = Some(f.to_owned());
            }
        }
        true
    })
    .unwrap();
    assert_eq!(last, "[DONE]");
    assert_eq!(pieces, whole);
    assert!(finish.is_some(), "no event carried finish_reason");

    // The streamed response reports its token counts in trailers, and the host counts them.
    let trailer = |name: &str| st.trailers.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let usage = &v["usage"];
    assert_eq!(
        trailer("x-tinystate-prompt-tokens"),
        Some(usage["prompt_tokens"].to_string()),
        "{:?}",
        st.trailers
    );
    assert_eq!(trailer("x-tinystate-completion-tokens"), Some("24".to_owned()), "{:?}", st.trailers);
    let both = 2.0 * usage["prompt_tokens"].as_f64().unwrap();
    s.wait_metric("tinystate_prompt_tokens_total", Duration::from_secs(5), |n| n == both);
    s.wait_metric("tinystate_completion_tokens_total", Duration::from_secs(5), |n| n == 48.0);
}

#[test]
fn chat_completion_and_chat_stream() {
    let s = real_server(&[]);
    let msgs = json!([{ "role": "user", "content": "Tell me a story." }]);
    let r = s.post_json(
        "/v1/chat/completions",
        &json!({ "model": model_id(&s), "messages": msgs, "max_tokens": 12, "temperature": 0 }),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["object"], "chat.completion", "{v}");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant", "{v}");
    let content = v["choices"][0]["message"]["content"].as_str().unwrap().to_owned();
    assert!(v["usage"]["completion_tokens"].as_u64().unwrap() > 0);

    let body = json!({ "model": model_id(&s), "messages": msgs, "max_tokens": 12, "temperature": 0, "stream": true });
    let mut st = s
        .open(
            "POST",
            "/v1/chat/completions",
            &[("content-type", "application/json")],
            body.to_string().as_bytes(),
        )
        .unwrap();
    assert_eq!(st.status, 200);
    let (mut streamed, mut done) = (String::new(), false);
    st.sse(|data| {
        if data == "[DONE]" {
            done = true;
        } else {
            let ev: Value = serde_json::from_str(data).unwrap();
            assert_eq!(ev["object"], "chat.completion.chunk", "{ev}");
            streamed.push_str(ev["choices"][0]["delta"]["content"].as_str().unwrap_or(""));
        }
        true
    })
    .unwrap();
    assert!(done);
    assert_eq!(streamed, content);
}

#[test]
fn seeded_sampling_is_reproducible() {
    let s = real_server(&[]);
    let params = json!({ "max_tokens": 24, "temperature": 0.9, "top_p": 0.95, "seed": 1234 });
    let a = text_of(&complete(&s, params.clone()).0);
    let b = text_of(&complete(&s, params).0);
    assert_eq!(a, b);
}

#[test]
fn stop_sequence_cuts_the_text() {
    let s = real_server(&[]);
    let full = text_of(&complete(&s, json!({ "max_tokens": 32 })).0);
    let chars: Vec<char> = full.chars().collect();
    assert!(chars.len() >= 8, "greedy text too short to pick a stop from: {full:?}");
    let stop: String = chars[chars.len() / 2..chars.len() / 2 + 3].iter().collect();
    let cut = full.find(&stop).unwrap();
    let (v, _) = complete(&s, json!({ "max_tokens": 32, "stop": [stop.clone()] }));
    assert_eq!(text_of(&v), full[..cut], "stop {stop:?}");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
}

#[test]
fn greedy_output_equals_tinystate_run() {
    let s = real_server(&[]);
    let served = text_of(&complete(&s, json!({ "max_tokens": 32 })).0);
    let out = std::process::Command::new(bin())
        .args(["run", "--temp", "0", "-n", "32", "--prompt", PROMPT, "--model"])
        .arg(default_model())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // `run` ends its output with a newline of its own.
    let printed = String::from_utf8_lossy(&out.stdout);
    assert_eq!(served, printed.strip_suffix('\n').unwrap_or(&printed));
}

#[test]
fn bad_inputs_get_4xx_with_openai_errors_and_the_server_keeps_serving() {
    let s = real_server(&[]);
    let model = model_id(&s);
    let post =
        |path: &str, body: &[u8]| s.request("POST", path, &[("content-type", "application/json")], body);
    let js = |v: Value| v.to_string().into_bytes();
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("malformed JSON", b"{\"prompt\": ".to_vec(), 400),
        ("wrong type", js(json!({ "model": model, "prompt": 5 })), 400),
        ("unknown model", js(json!({ "model": "no-such-model", "prompt": "hi" })), 404),
        ("empty prompt", js(json!({ "model": model, "prompt": "" })), 400),
        ("max_tokens 0", js(json!({ "model": model, "prompt": "hi", "max_tokens": 0 })), 400),
        ("max_tokens < 0", js(json!({ "model": model, "prompt": "hi", "max_tokens": -1 })), 400),
        (
            "max_tokens over cap",
            js(json!({ "model": model, "prompt": "hi", "max_tokens": 1_000_000_000u64 })),
            400,
        ),
        ("temperature < 0", js(json!({ "model": model, "prompt": "hi", "temperature": -0.5 })), 400),
        (
            "temperature NaN",
            format!("{{\"model\":\"{model}\",\"prompt\":\"hi\",\"temperature\":NaN}}").into_bytes(),
            400,
        ),
        ("top_p 0", js(json!({ "model": model, "prompt": "hi", "top_p": 0 })), 400),
        ("top_p > 1", js(json!({ "model": model, "prompt": "hi", "top_p": 1.5 })), 400),
        (
            "invalid UTF-8",
            [&b"{\"model\":\""[..], model.as_bytes(), b"\",\"prompt\":\"\xff\xfe\"}"].concat(),
            400,
        ),
        ("chat without messages", js(json!({ "model": model })), 400),
    ];
    for (what, body, status) in cases {
        let path = if what.starts_with("chat") { "/v1/chat/completions" } else { "/v1/completions" };
        let r = post(path, &body);
        assert_eq!(r.status, status, "{what}: {}", r.text());
        r.assert_openai_error(status);
    }
    // Oversized body: 413 (the guest stops reading at its cap; the host streams, never buffers).
    let huge = vec![b' '; 64 << 20];
    let r = s.request("POST", "/v1/completions", &[("content-type", "application/json")], &huge);
    r.assert_openai_error(413);
    let r = s.request("DELETE", "/v1/completions", &[], b"");
    r.assert_openai_error(405);
    let r = s.request("GET", "/v1/no-such-route", &[], b"");
    r.assert_openai_error(404);
    assert_eq!(s.request("GET", "/health", &[], b"").status, 200);
    complete(&s, json!({}));
}

/// The request's peak guest memory, from the host's trailer.
fn peak(r: &crate::harness::Reply) -> u64 {
    r.trailer("x-tinystate-peak-memory-bytes")
        .unwrap_or_else(|| panic!("no peak-memory trailer: {:?}", r.trailers))
        .parse()
        .unwrap()
}

#[test]
fn peak_memory_is_constant_in_prompt_length() {
    let s = real_server(&["--timeout", "1800"]);
    let model = model_id(&s);
    let prompt = |bytes: usize| "the cat sat on the mat. ".repeat(bytes / 24 + 1)[..bytes].to_owned();
    let small = s
        .post_json("/v1/completions", &json!({ "model": model, "prompt": prompt(1 << 10), "max_tokens": 1 }));
    assert_eq!(small.status, 200, "{}", small.text());
    let big = s.post_json(
        "/v1/completions",
        &json!({ "model": model, "prompt": prompt(256 << 10), "max_tokens": 1 }),
    );
    assert_eq!(big.status, 200, "{}", big.text());
    assert!(big.json()["usage"]["prompt_tokens"].as_u64().unwrap() > 20_000);
    assert_eq!(peak(&small), peak(&big), "1 KB vs 256 KB prompt");
}

#[test]
fn peak_memory_is_constant_in_output_length() {
    let s = real_server(&["--timeout", "1800"]);
    let model = model_id(&s);
    let run = |n: u64| {
        let body = json!({ "model": model, "prompt": PROMPT, "max_tokens": n, "temperature": 0.8, "seed": 7, "ignore_eos": true });
        let r = s.post_json("/v1/completions", &body);
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["usage"]["completion_tokens"], n, "needs the ignore_eos extension");
        peak(&r)
    };
    assert_eq!(run(16), run(1024), "16 vs 1024 generated tokens");
}

#[test]
fn client_disconnect_mid_stream_frees_the_instance() {
    let s = real_server(&[]);
    let body = json!({ "model": model_id(&s), "prompt": PROMPT, "max_tokens": 1024, "stream": true, "ignore_eos": true });
    let st = s.stream_events(&body, 3);
    assert_eq!(s.metric("tinystate_active_instances"), 1.0);
    drop(st);
    s.wait_metric("tinystate_active_instances", Duration::from_secs(5), |v| v == 0.0);
}

#[test]
fn guest_trap_is_500_and_the_next_request_is_200() {
    // `--test-faults` lets a request ask the host to trap its guest at the first epoch check
    // (the guest unwinds mid-request as on any trap), or to give it no memory growth at all.
    let s = real_server(&["--test-faults"]);
    let body = json!({ "model": model_id(&s), "prompt": PROMPT, "max_tokens": 4 }).to_string();
    let hdrs = [("content-type", "application/json"), ("x-tinystate-test-fault", "trap")];
    let r = s.request("POST", "/v1/completions", &hdrs, body.as_bytes());
    let v = r.assert_openai_error(500);
    assert!(v["error"]["message"].as_str().unwrap().contains("injected"), "{v}");
    complete(&s, json!({ "max_tokens": 4 }));
    s.wait_metric("tinystate_active_instances", Duration::from_secs(5), |n| n == 0.0);
    assert_eq!(s.metric("tinystate_guest_traps_total"), 1.0);
}
