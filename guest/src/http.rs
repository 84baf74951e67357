//! The wasi:http side: reading a request body in pieces under a cap, and writing a response
//! whole or as a stream. Blocking calls only: the guest does one thing at a time.

use spin_sdk::http::{Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam};
use spin_sdk::wit::wasi::http0_2_0::types::IncomingBody;
use wasi::io::streams::{OutputStream, StreamError};

use crate::api::ApiError;

/// Bytes asked for per read of the request body.
const READ_CHUNK: u64 = 16 << 10;
/// Most bytes one `blocking-write-and-flush` takes (WASI 0.2).
const WRITE_CHUNK: usize = 4096;

/// Reads the body of `req` piece by piece into `each`, refusing more than `cap` bytes (413),
/// also when `content-length` says so up front.
pub fn read_body(
    req: IncomingRequest,
    cap: usize,
    mut each: impl FnMut(&[u8]) -> Result<(), ApiError>,
) -> Result<(), ApiError> {
    let declared = req.headers().get("content-length");
    if let Some(v) = declared.first()
        && std::str::from_utf8(v)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .is_some_and(|n| n > cap as u64)
    {
        return Err(ApiError::too_large(cap));
    }
    let body = req.consume().map_err(|()| ApiError::internal("the request body was already taken"))?;
    let stream =
        body.stream().map_err(|()| ApiError::internal("the request body stream was already taken"))?;
    let mut total = 0usize;
    let result = loop {
        match stream.blocking_read(READ_CHUNK) {
            Ok(bytes) => {
                total += bytes.len();
                if total > cap {
                    break Err(ApiError::too_large(cap));
                }
                if let Err(e) = each(&bytes) {
                    break Err(e);
                }
            }
            Err(StreamError::Closed) => break Ok(()),
            Err(StreamError::LastOperationFailed(e)) => {
                break Err(ApiError::invalid(
                    None,
                    format!("reading the request body failed: {}", e.to_debug_string()),
                ));
            }
        }
    };
    drop(stream);
    let _ = IncomingBody::finish(body);
    result
}

fn headers(content_type: &str, extra: &[(&str, &str)]) -> Fields {
    let mut list = vec![("content-type", content_type)];
    list.extend_from_slice(extra);
    field_list(&list)
}

/// Header or trailer fields; names and values here are ours, so a refusal is a bug that costs
/// only the fields, not the response.
fn field_list(list: &[(&str, &str)]) -> Fields {
    let owned: Vec<(String, Vec<u8>)> =
        list.iter().map(|(k, v)| ((*k).to_owned(), v.as_bytes().to_vec())).collect();
    Fields::from_list(&owned).unwrap_or_else(|_| Fields::new())
}

/// A response body being written.
pub struct BodyWriter {
    stream: Option<OutputStream>,
    body: Option<OutgoingBody>,
}

impl BodyWriter {
    /// Sends the status and headers; the body follows with [`BodyWriter::write`].
    pub fn start(
        out: ResponseOutparam,
        status: u16,
        content_type: &str,
        extra: &[(&str, &str)],
    ) -> Option<Self> {
        let resp = OutgoingResponse::new(headers(content_type, extra));
        let _ = resp.set_status_code(status);
        let body = resp.body().ok()?;
        out.set(resp);
        let stream = body.write().ok()?;
        Some(Self { stream: Some(stream), body: Some(body) })
    }

    /// Writes and flushes `bytes`; `Err` when the client has gone away.
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), ()> {
        let stream = self.stream.as_ref().ok_or(())?;
        for piece in bytes.chunks(WRITE_CHUNK) {
            stream.blocking_write_and_flush(piece).map_err(|_| ())?;
        }
        Ok(())
    }

    /// Ends the body.
    pub fn finish(self) {
        self.finish_with_trailers(&[]);
    }

    /// Ends the body with trailers (none when `trailers` is empty).
    pub fn finish_with_trailers(mut self, trailers: &[(&str, &str)]) {
        self.stream.take();
        if let Some(body) = self.body.take() {
            let fields = (!trailers.is_empty()).then(|| field_list(trailers));
            let _ = OutgoingBody::finish(body, fields);
        }
    }
}

/// Answers with one whole body.
pub fn respond(out: ResponseOutparam, status: u16, content_type: &str, extra: &[(&str, &str)], body: &[u8]) {
    if let Some(mut w) = BodyWriter::start(out, status, content_type, extra) {
        let _ = w.write(body);
        w.finish();
    }
}

/// Answers with OpenAI's error body.
pub fn respond_error(out: ResponseOutparam, e: &ApiError, extra: &[(&str, &str)]) {
    respond(out, e.status, "application/json", extra, e.body().as_bytes());
}
