//! The request handler: routing, then each endpoint.

use spin_sdk::http::{IncomingRequest, Method, ResponseOutparam};
use tinystate_engine::generate::Pace;

use crate::api::{self, ApiError, Endpoint, Meta, Usage};
use crate::http::{BodyWriter, read_body, respond, respond_error};
use crate::json_stream::BodyScanner;
use crate::model::{Engine, engine};
use crate::prompt::Sequence;
use crate::{chat, sse};

/// The playground page (one file, no external assets).
const PLAYGROUND: &str = include_str!("playground.html");

#[spin_sdk::http_component]
async fn handle(req: IncomingRequest, out: ResponseOutparam) {
    let path_q = req.path_with_query().unwrap_or_else(|| "/".to_owned());
    let path = path_q.split('?').next().unwrap_or("/").to_owned();
    let method = req.method();
    let (allow, post) = match path.as_str() {
        "/" | "/health" | "/v1/models" => ("GET, HEAD", false),
        "/v1/completions" | "/v1/chat/completions" => ("POST", true),
        _ => return respond_error(out, &ApiError::not_found(&path), &[]),
    };
    let ok = match method {
        Method::Post => post,
        Method::Get | Method::Head => !post,
        _ => false,
    };
    if !ok {
        let name = match &method {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
            Method::Patch => "PATCH",
            Method::Options => "OPTIONS",
            Method::Connect => "CONNECT",
            Method::Trace => "TRACE",
            Method::Other(m) => m.as_str(),
        };
        return respond_error(out, &ApiError::method_not_allowed(name, &path, allow), &[("allow", allow)]);
    }
    crate::model::init();
    let e = match engine() {
        Ok(e) => e,
        Err(msg) => return respond_error(out, &ApiError::internal(msg), &[]),
    };
    match path.as_str() {
        "/" => respond(out, 200, "text/html; charset=utf-8", &[], PLAYGROUND.as_bytes()),
        "/health" => respond(out, 200, "application/json", &[], br#"{"status":"ok"}"#),
        "/v1/models" => {
            respond(out, 200, "application/json", &[], api::models(&e.served_id(), now().0).as_bytes())
        }
        "/v1/completions" => complete(e, req, out, Endpoint::Completions),
        _ => complete(e, req, out, Endpoint::Chat),
    }
}

/// How a request's greedy tokens are best taken from a decoder that computes them ahead: as
/// each is ready when the text is streamed, else in as few round trips as possible.
fn pace(request: &api::Request) -> Pace {
    if request.stream { Pace::Eager } else { Pace::Batched }
}

/// Unix time in seconds and a nonce from the clock's nanoseconds.
fn now() -> (u64, u64) {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    (d.as_secs(), d.as_nanos() as u64)
}

fn complete(e: &'static Engine, req: IncomingRequest, out: ResponseOutparam, endpoint: Endpoint) {
    match prepare(e, req, endpoint) {
        Ok((seq, request)) => run(e, seq, request, out, endpoint),
        Err(err) => respond_error(out, &err, &[]),
    }
}

/// Reads and checks the request, tokenises and prefills the prompt.
fn prepare(
    e: &'static Engine,
    req: IncomingRequest,
    endpoint: Endpoint,
) -> Result<(Sequence, api::Request), ApiError> {
    let (nonce_secs, nonce) = now();
    let seed = api::mix(nonce ^ nonce_secs);
    let scan_err = |err: crate::json_stream::ScanError| match err {
        crate::json_stream::ScanError::FieldsTooLarge(cap) => ApiError::too_large(cap),
        other => ApiError::invalid(None, other.to_string()),
    };
    match endpoint {
        Endpoint::Completions => {
            let mut seq = Sequence::new(e, false);
            let mut scanner = BodyScanner::new(Some("prompt"), api::MAX_FIELDS_BYTES);
            let mut sink = |text: &[u8]| seq.push(text);
            read_body(req, api::MAX_BODY_BYTES, |bytes| scanner.push(bytes, &mut sink).map_err(scan_err))?;
            let scanned = scanner.finish(&mut sink).map_err(scan_err)?;
            let fields = api::parse_fields(&scanned.fields)?;
            let request = api::check_request(&fields, endpoint, &e.served_id(), seed)?;
            if !scanned.streamed {
                return Err(match fields.get("prompt") {
                    None | Some(serde_json::Value::Null) => {
                        ApiError::invalid(Some("prompt"), "'prompt' is required")
                    }
                    Some(_) => ApiError::invalid(Some("prompt"), "'prompt' must be a string"),
                });
            }
            seq.finish(&request.params, pace(&request))?;
            Ok((seq, request))
        }
        Endpoint::Chat => {
            let mut scanner = BodyScanner::new(None, api::MAX_CHAT_BYTES);
            read_body(req, api::MAX_CHAT_BYTES.min(api::MAX_BODY_BYTES), |bytes| {
                scanner.push(bytes, &mut |_| {}).map_err(scan_err)
            })?;
            let scanned = scanner.finish(&mut |_| {}).map_err(scan_err)?;
            let fields = api::parse_fields(&scanned.fields)?;
            let request = api::check_request(&fields, endpoint, &e.served_id(), seed)?;
            let messages = chat::messages(&fields)?;
            drop(fields);
            let prompt = e.chat.render(&messages)?;
            drop(messages);
            let mut seq = Sequence::new(e, true);
            for piece in prompt.as_bytes().chunks(crate::json_stream::OUT_CHUNK) {
                seq.push(piece);
            }
            seq.finish(&request.params, pace(&request))?;
            Ok((seq, request))
        }
    }
}

/// Generates and answers, streamed or whole.
fn run(
    e: &'static Engine,
    mut seq: Sequence,
    request: api::Request,
    out: ResponseOutparam,
    endpoint: Endpoint,
) {
    let prompt_tokens = seq.prompt_tokens();
    let (created, nonce) = now();
    let meta = Meta::new(endpoint, &e.served_id(), created, nonce ^ request.params.sampler.seed);
    if !request.stream {
        let mut text = String::new();
        let generated = seq.generate(&request.params, |piece, _| {
            text.push_str(piece);
            Ok(())
        });
        let (finish, n) = match generated {
            Ok(r) => r,
            Err(err) => return respond_error(out, &err, &[]),
        };
        let body = meta.completion(&text, finish, Usage { prompt: prompt_tokens, completion: n });
        // The host's token metrics read these (contract in host/src/serve/mod.rs): headers
        // here, trailers when streaming.
        let (p, c) = (prompt_tokens.to_string(), n.to_string());
        return respond(out, 200, "application/json", &token_counts(&p, &c), body.as_bytes());
    }
    let Some(mut w) = BodyWriter::start(
        out,
        200,
        "text/event-stream",
        &[("cache-control", "no-cache"), ("x-accel-buffering", "no")],
    ) else {
        return;
    };
    let mut buf = Vec::new();
    let mut first = true;
    // The role (chat) goes out before the first token, so the client sees the stream start.
    if endpoint == Endpoint::Chat {
        sse::event(&mut buf, &meta.chunk("", true, None));
        first = false;
        if w.write(&buf).is_err() {
            return;
        }
    }
    let generated = seq.generate(&request.params, |piece, finish| {
        buf.clear();
        if !piece.is_empty() || first {
            sse::event(&mut buf, &meta.chunk(piece, first, None));
            first = false;
        }
        if let Some(f) = finish {
            sse::event(&mut buf, &meta.chunk("", false, Some(f)));
        }
        if buf.is_empty() { Ok(()) } else { w.write(&buf) }
    });
    buf.clear();
    let n = match generated {
        Ok((_, n)) => n,
        Err(err) => {
            // The status went out already: an error event (as OpenAI streams them), no [DONE].
            sse::event(&mut buf, &err.body());
            if w.write(&buf).is_ok() {
                w.finish();
            }
            return;
        }
    };
    if request.include_usage {
        sse::event(&mut buf, &meta.usage_chunk(Usage { prompt: prompt_tokens, completion: n }));
    }
    buf.extend_from_slice(sse::DONE);
    if w.write(&buf).is_ok() {
        let (p, c) = (prompt_tokens.to_string(), n.to_string());
        w.finish_with_trailers(&token_counts(&p, &c));
    }
}

/// The token-count fields the host reads (`x-tinystate-*-tokens`), from decimal strings.
fn token_counts<'a>(prompt: &'a str, completion: &'a str) -> [(&'static str, &'a str); 2] {
    [("x-tinystate-prompt-tokens", prompt), ("x-tinystate-completion-tokens", completion)]
}
