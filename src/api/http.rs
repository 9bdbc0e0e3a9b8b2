//! HTTP/1.1 as the API needs it, with no I/O: a [`Connection`] takes the
//! bytes a peer sent and gives back the bytes to answer, so the server's
//! socket loop stays small and the whole protocol can be fuzzed without a
//! socket. Request heads are parsed by `httparse`; everything here is
//! bounded by [`Limits`].
//!
//! What is accepted: `GET`/`PUT`/`PATCH` (others reach the router, which
//! answers 405 or 400), HTTP/1.0 and 1.1, bodies framed by one
//! `Content-Length`, `Expect: 100-continue`, keep-alive (the HTTP/1.1
//! default; `Connection: close` ends it), pipelined requests (answered in
//! order). What is refused, and the connection then closed: malformed
//! heads (400), heads over the limit (431), bodies over the limit (413),
//! `Transfer-Encoding` (chunked or not: 411, `Content-Length` is required),
//! conflicting or malformed `Content-Length` (400).

use std::time::Duration;

/// Bounds on what one connection and the server may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Open connections at once; one more is answered 503 and closed
    /// (after the least recently used idle connection, if any, has been
    /// closed to make room instead).
    pub max_connections: usize,
    /// Request line plus headers, in bytes.
    pub max_head_bytes: usize,
    /// Header lines in one request.
    pub max_headers: usize,
    /// A request body, in bytes (Firecracker's default API payload limit
    /// is 51,200 bytes).
    pub max_body_bytes: usize,
    /// From a request's first byte to its last; a slower client gets 408
    /// and is disconnected.
    pub request_timeout: Duration,
    /// An idle keep-alive connection is closed after this long.
    pub idle_timeout: Duration,
    /// Answers not yet taken by the peer; past this, the connection's
    /// further requests wait (pipelining without reading).
    pub max_pending_output: usize,
    /// Requests answered per connection per pass of the server loop (so a
    /// pipelining client cannot starve the others).
    pub max_requests_per_pass: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 16,
            max_head_bytes: 8 << 10,
            max_headers: 32,
            max_body_bytes: 51_200,
            request_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(120),
            max_pending_output: 64 << 10,
            max_requests_per_pass: 16,
        }
    }
}

impl Limits {
    /// The most a connection's input buffer holds: one whole request.
    pub fn max_request_bytes(&self) -> usize {
        self.max_head_bytes + self.max_body_bytes
    }
}

/// One parsed request, as the router sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request<'a> {
    /// The method token, as sent (`GET`, `PUT`, `PATCH`, or anything else).
    pub method: &'a str,
    /// The path, without query string (an absolute-form target's scheme and
    /// host are removed).
    pub path: &'a str,
    /// The body, when `Content-Length` is above zero.
    pub body: Option<&'a [u8]>,
}

/// An answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// A JSON body (none for 204).
    pub body: Option<String>,
    /// The `Allow` header of a 405.
    pub allow: Option<&'static str>,
}

impl Response {
    /// 204 No Content.
    pub fn no_content() -> Self {
        Response { status: 204, body: None, allow: None }
    }

    /// 200 with a JSON body.
    pub fn json(body: String) -> Self {
        Response { status: 200, body: Some(body), allow: None }
    }

    /// An error status with `{"fault_message": message}`.
    pub fn fault(status: u16, message: &str) -> Self {
        let body = serde_json::to_string(&crate::api::model::Fault { fault_message: message })
            .unwrap_or_else(|_| "{\"fault_message\":\"error\"}".to_string());
        Response { status, body: Some(body), allow: None }
    }
}

/// The reason phrase of the statuses the API uses.
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// Appends the wire form of `resp` to `out`.
pub fn write_response(out: &mut Vec<u8>, resp: &Response, keep_alive: bool) {
    use std::fmt::Write;
    let mut head = String::with_capacity(160);
    let _ = write!(head, "HTTP/1.1 {} {}\r\nServer: ember\r\n", resp.status, reason(resp.status));
    head.push_str(if keep_alive { "Connection: keep-alive\r\n" } else { "Connection: close\r\n" });
    if let Some(a) = resp.allow {
        let _ = write!(head, "Allow: {a}\r\n");
    }
    match &resp.body {
        Some(b) if resp.status != 204 => {
            let _ = write!(head, "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n", b.len());
            out.extend_from_slice(head.as_bytes());
            out.extend_from_slice(b.as_bytes());
        }
        _ if resp.status == 204 => {
            head.push_str("\r\n");
            out.extend_from_slice(head.as_bytes());
        }
        _ => {
            head.push_str("Content-Length: 0\r\n\r\n");
            out.extend_from_slice(head.as_bytes());
        }
    }
}

/// The 503 a connection over the limit gets before it is closed.
pub fn busy_response() -> Vec<u8> {
    let mut out = Vec::new();
    let msg = "too many API connections: close an idle one and retry";
    write_response(&mut out, &Response::fault(503, msg), false);
    out
}

/// The framing a request head asks for.
struct Framing {
    content_length: usize,
    keep_alive: bool,
    expect_continue: bool,
}

/// Reads the headers that frame the body. `Err` is the response to send
/// before closing.
fn framing(req: &httparse::Request<'_, '_>, limits: &Limits) -> Result<Framing, Response> {
    let http10 = req.version == Some(0);
    let mut keep_alive = !http10;
    let mut content_length: Option<usize> = None;
    let mut expect_continue = false;
    for h in req.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            let v = std::str::from_utf8(h.value).map(str::trim).unwrap_or("");
            if v.is_empty() || v.len() > 19 || !v.bytes().all(|b| b.is_ascii_digit()) {
                let shown = String::from_utf8_lossy(&h.value[..h.value.len().min(40)]).into_owned();
                return Err(Response::fault(400, &format!("invalid Content-Length {shown:?}")));
            }
            let n: usize = v.parse().map_err(|_| Response::fault(400, &format!("invalid Content-Length {v:?}")))?;
            if content_length.is_some_and(|c| c != n) {
                return Err(Response::fault(400, "conflicting Content-Length headers"));
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            let v = String::from_utf8_lossy(&h.value[..h.value.len().min(40)]).into_owned();
            return Err(Response::fault(
                411,
                &format!("Transfer-Encoding {v:?} is not supported: send the body with a Content-Length"),
            ));
        } else if name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|&b| b == b',') {
                let t = token.trim_ascii();
                if t.eq_ignore_ascii_case(b"close") {
                    keep_alive = false;
                } else if t.eq_ignore_ascii_case(b"keep-alive") && http10 {
                    keep_alive = true;
                }
            }
        } else if name.eq_ignore_ascii_case("expect") {
            if h.value.trim_ascii().eq_ignore_ascii_case(b"100-continue") {
                expect_continue = !http10;
            } else {
                let v = String::from_utf8_lossy(&h.value[..h.value.len().min(40)]).into_owned();
                return Err(Response::fault(400, &format!("unsupported Expect {v:?}")));
            }
        }
    }
    let content_length = content_length.unwrap_or(0);
    if content_length > limits.max_body_bytes {
        return Err(Response::fault(
            413,
            &format!("request body of {content_length} bytes is over the limit of {} bytes", limits.max_body_bytes),
        ));
    }
    Ok(Framing { content_length, keep_alive, expect_continue })
}

/// The path of a request target: origin form as is, absolute form
/// (`http://host/path`) without scheme and host; the query string removed.
fn target_path(target: &str) -> &str {
    let t = match target.find("://") {
        Some(i) if !target[..i].contains('/') => {
            let rest = &target[i + 3..];
            match rest.find('/') {
                Some(j) => &rest[j..],
                None => "/",
            }
        }
        _ => target,
    };
    match t.find(['?', '#']) {
        Some(i) => &t[..i],
        None => t,
    }
}

/// One client connection's protocol state: bytes in, bytes out.
#[derive(Debug, Default)]
pub struct Connection {
    input: Vec<u8>,
    output: Vec<u8>,
    /// Set once no more requests will be read (error, `Connection: close`,
    /// or the peer's end of input): close when the output is flushed.
    closing: bool,
    /// A `100 Continue` was sent for the request at the head of `input`.
    continued: bool,
    /// Requests answered so far.
    answered: u64,
}

impl Connection {
    /// A fresh connection.
    pub fn new() -> Self {
        Connection::default()
    }

    /// How many more bytes the connection takes now (0 while it is closing
    /// or its answers are not being read).
    pub fn room(&self, limits: &Limits) -> usize {
        if self.closing || self.output.len() >= limits.max_pending_output {
            return 0;
        }
        limits.max_request_bytes().saturating_sub(self.input.len())
    }

    /// Takes bytes from the peer (at most [`Connection::room`] of them are
    /// kept; the caller reads no more than that).
    pub fn receive(&mut self, data: &[u8], limits: &Limits) {
        let n = data.len().min(self.room(limits));
        self.input.extend_from_slice(&data[..n]);
    }

    /// The peer will send nothing more: complete requests are still
    /// answered, then the connection closes.
    pub fn end_of_input(&mut self) {
        self.closing = true;
    }

    /// Whether part of a request has arrived and not yet been answered.
    pub fn has_partial_request(&self) -> bool {
        !self.input.is_empty()
    }

    /// Whether the connection is done: closing, with everything sent.
    pub fn is_finished(&self) -> bool {
        self.closing && self.output.is_empty()
    }

    #[cfg(any(test, feature = "fuzzing"))]
    /// Whether no more requests will be read.
    pub fn is_closing(&self) -> bool {
        self.closing
    }

    #[cfg(any(test, feature = "fuzzing"))]
    /// Bytes of requests received and not yet answered.
    pub fn buffered(&self) -> usize {
        self.input.len()
    }

    /// Requests answered so far.
    pub fn answered(&self) -> u64 {
        self.answered
    }

    /// Bytes waiting to be sent.
    pub fn output(&self) -> &[u8] {
        &self.output
    }

    /// `n` bytes of [`Connection::output`] were sent.
    pub fn consume_output(&mut self, n: usize) {
        self.output.drain(..n.min(self.output.len()));
        if self.output.is_empty() && self.output.capacity() > 16 << 10 {
            self.output = Vec::new();
        }
    }

    /// The request has taken too long: answer 408 and close.
    pub fn time_out(&mut self) {
        if !self.closing {
            let msg = "request not completed in time";
            write_response(&mut self.output, &Response::fault(408, msg), false);
            self.fail();
        }
    }

    fn fail(&mut self) {
        self.closing = true;
        self.input = Vec::new();
        self.continued = false;
    }

    /// Answers every complete request in the input (in order, at most
    /// `limits.max_requests_per_pass`), calling `handle` for each. Returns
    /// the number answered.
    pub fn process(&mut self, limits: &Limits, handle: &mut dyn FnMut(&Request<'_>) -> Response) -> usize {
        let mut done = 0;
        while done < limits.max_requests_per_pass
            && !self.closing
            && !self.input.is_empty()
            && self.output.len() < limits.max_pending_output
        {
            let mut headers = vec![httparse::EMPTY_HEADER; limits.max_headers];
            let mut req = httparse::Request::new(&mut headers);
            let head_len = match req.parse(&self.input) {
                Ok(httparse::Status::Complete(n)) => n,
                Ok(httparse::Status::Partial) => {
                    if self.input.len() > limits.max_head_bytes {
                        let msg = format!("request head over the limit of {} bytes", limits.max_head_bytes);
                        write_response(&mut self.output, &Response::fault(431, &msg), false);
                        self.fail();
                    }
                    break;
                }
                Err(httparse::Error::TooManyHeaders) => {
                    let msg = format!("more than {} header lines", limits.max_headers);
                    write_response(&mut self.output, &Response::fault(431, &msg), false);
                    self.fail();
                    break;
                }
                Err(e) => {
                    write_response(
                        &mut self.output,
                        &Response::fault(400, &format!("malformed HTTP request: {e}")),
                        false,
                    );
                    self.fail();
                    break;
                }
            };
            if head_len > limits.max_head_bytes {
                let msg = format!("request head over the limit of {} bytes", limits.max_head_bytes);
                write_response(&mut self.output, &Response::fault(431, &msg), false);
                self.fail();
                break;
            }
            let framing = match framing(&req, limits) {
                Ok(f) => f,
                Err(resp) => {
                    write_response(&mut self.output, &resp, false);
                    self.fail();
                    break;
                }
            };
            let total = head_len + framing.content_length;
            if self.input.len() < total {
                if framing.expect_continue && !self.continued {
                    self.output.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
                    self.continued = true;
                }
                break;
            }
            let method = req.method.unwrap_or("");
            let path = target_path(req.path.unwrap_or(""));
            let body = (framing.content_length > 0).then(|| &self.input[head_len..total]);
            let resp = handle(&Request { method, path, body });
            let start = self.output.len();
            write_response(&mut self.output, &resp, framing.keep_alive);
            if method == "HEAD" {
                // The head of the answer only (its Content-Length stays).
                if let Some(end) = self.output[start..].windows(4).position(|w| w == b"\r\n\r\n") {
                    self.output.truncate(start + end + 4);
                }
            }
            self.answered += 1;
            done += 1;
            self.input.drain(..total);
            self.continued = false;
            if !framing.keep_alive {
                self.fail();
            }
        }
        if self.input.is_empty() && self.input.capacity() > 16 << 10 {
            self.input = Vec::new();
        }
        done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn echo(req: &Request<'_>) -> Response {
        let body = format!("{{\"m\":{:?},\"p\":{:?},\"b\":{}}}", req.method, req.path, req.body.map_or(0, |b| b.len()));
        Response::json(body)
    }

    fn run(input: &[u8], limits: &Limits) -> (String, Connection) {
        let mut c = Connection::new();
        c.receive(input, limits);
        c.process(limits, &mut echo);
        let out = String::from_utf8(c.output().to_vec()).unwrap();
        (out, c)
    }

    #[test]
    fn simple_get_keeps_alive() {
        let (out, c) = run(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n", &Limits::default());
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
        assert!(out.contains("Connection: keep-alive\r\n"));
        assert!(out.ends_with("{\"m\":\"GET\",\"p\":\"/\",\"b\":0}"), "{out}");
        assert!(!c.is_closing());
    }

    #[test]
    fn body_needs_all_its_bytes() {
        let l = Limits::default();
        let mut c = Connection::new();
        c.receive(b"PUT /x HTTP/1.1\r\nContent-Length: 5\r\n\r\nab", &l);
        assert_eq!(c.process(&l, &mut echo), 0);
        assert!(c.output().is_empty());
        c.receive(b"cde", &l);
        assert_eq!(c.process(&l, &mut echo), 1);
        assert!(String::from_utf8_lossy(c.output()).contains("\"b\":5"));
    }

    #[test]
    fn pipelined_requests_answer_in_order() {
        let l = Limits::default();
        let (out, c) = run(b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\nGET /c HTTP/1.1\r\n\r\n", &l);
        let a = out.find("\"/a\"").unwrap();
        let b = out.find("\"/b\"").unwrap();
        let cc = out.find("\"/c\"").unwrap();
        assert!(a < b && b < cc);
        assert_eq!(c.answered(), 3);
    }

    #[test]
    fn connection_close_and_http10() {
        let l = Limits::default();
        let (out, c) = run(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\nGET /ignored HTTP/1.1\r\n\r\n", &l);
        assert!(out.contains("Connection: close"));
        assert!(!out.contains("ignored"));
        assert!(c.is_finished() || c.is_closing());
        let (out, c) = run(b"GET / HTTP/1.0\r\n\r\n", &l);
        assert!(out.contains("Connection: close"));
        assert!(c.is_closing());
        let (out, c) = run(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", &l);
        assert!(out.contains("Connection: keep-alive"));
        assert!(!c.is_closing());
    }

    #[test]
    fn refusals_close_the_connection() {
        let l = Limits::default();
        for (req, status) in [
            (&b"PUT /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"[..], "411"),
            (b"PUT /x HTTP/1.1\r\nContent-Length: 999999\r\n\r\n", "413"),
            (b"PUT /x HTTP/1.1\r\nContent-Length: -1\r\n\r\n", "400"),
            (b"PUT /x HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", "400"),
            (b"\x00\x01garbage\r\n\r\n", "400"),
            (b"GET / HTTP/1.1\r\nExpect: tea\r\n\r\n", "400"),
        ] {
            let (out, c) = run(req, &l);
            assert!(out.starts_with(&format!("HTTP/1.1 {status} ")), "{out}");
            assert!(out.contains("\"fault_message\""), "{out}");
            assert!(c.is_closing());
        }
    }

    #[test]
    fn head_limits() {
        let l = Limits::default();
        let mut big = b"GET / HTTP/1.1\r\nX-Pad: ".to_vec();
        big.resize(l.max_head_bytes + 100, b'a');
        let (out, _) = run(&big, &l);
        assert!(out.starts_with("HTTP/1.1 431 "), "{out}");
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..40 {
            many.extend_from_slice(format!("X-{i}: y\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        let (out, _) = run(&many, &l);
        assert!(out.starts_with("HTTP/1.1 431 "), "{out}");
    }

    #[test]
    fn expect_continue_once() {
        let l = Limits::default();
        let mut c = Connection::new();
        c.receive(b"PUT /x HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n", &l);
        c.process(&l, &mut echo);
        c.process(&l, &mut echo);
        assert_eq!(c.output(), b"HTTP/1.1 100 Continue\r\n\r\n");
        c.receive(b"{}", &l);
        c.process(&l, &mut echo);
        let out = String::from_utf8_lossy(c.output()).into_owned();
        assert_eq!(out.matches("100 Continue").count(), 1);
        assert!(out.contains("200 OK"));
    }

    #[test]
    fn head_answers_have_no_body() {
        let (out, _) = run(b"HEAD / HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\n", &Limits::default());
        let first = out.find("\r\n\r\n").unwrap() + 4;
        assert!(out[first..].starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
    }

    #[test]
    fn targets() {
        assert_eq!(target_path("/machine-config?x=1"), "/machine-config");
        assert_eq!(target_path("http://localhost/drives/a"), "/drives/a");
        assert_eq!(target_path("http://localhost"), "/");
        assert_eq!(target_path("*"), "*");
    }

    #[test]
    fn backpressure_stops_reading() {
        let l = Limits { max_pending_output: 100, ..Limits::default() };
        let mut c = Connection::new();
        c.receive(&b"GET / HTTP/1.1\r\n\r\n".repeat(10), &l);
        c.process(&l, &mut echo);
        assert!(c.answered() < 10);
        assert_eq!(c.room(&l), 0);
        let n = c.output().len();
        c.consume_output(n);
        c.process(&l, &mut echo);
        assert!(c.answered() > 1);
    }

    #[test]
    fn no_content_has_no_body() {
        let mut out = Vec::new();
        write_response(&mut out, &Response::no_content(), true);
        assert_eq!(out, b"HTTP/1.1 204 No Content\r\nServer: ember\r\nConnection: keep-alive\r\n\r\n");
    }
}
