//! Just enough HTTP/1.1 for the control API, both ways: requests are
//! parsed by the server (from any local process: untrusted input, hence
//! the caps) and written by the client; responses the other way round.
//!
//! Written here rather than taken from a crate because the API needs a
//! few hundred lines of it: `Content-Length` bodies only (no chunked
//! encoding, as Firecracker's micro_http), keep-alive, `Expect:
//! 100-continue` (curl sends it for larger bodies), every size capped.

use std::io::{self, Write};

/// Request line plus headers. Firecracker's requests are a few hundred
/// bytes; 8 KiB is the common server default and more than any client
/// here sends.
pub const MAX_HEAD_BYTES: usize = 8 * 1024;
/// Headers per request (curl sends 4-6).
pub const MAX_HEADERS: usize = 32;
/// Request bodies: the largest API body (a drive with a long path) is
/// well under 1 KiB; the cap bounds what a client can make the server hold.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Response bodies the client accepts (`GET /vm/config` with many drives
/// stays far below).
pub const MAX_RESPONSE_BODY_BYTES: usize = 1024 * 1024;

/// What is wrong with a request (or a response, for the client).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    #[error("Request headers are larger than the limit of {MAX_HEAD_BYTES} bytes allowed by the server.")]
    HeadTooLarge,
    #[error("More than {MAX_HEADERS} headers in the request.")]
    TooManyHeaders,
    #[error("Invalid request line: {0}")]
    RequestLine(String),
    #[error("Unsupported HTTP version {0:?} (expected HTTP/1.0 or HTTP/1.1).")]
    Version(String),
    #[error("Invalid header line {0:?}.")]
    Header(String),
    #[error("Invalid Content-Length {0:?}.")]
    ContentLength(String),
    #[error("Request payload with size {0} is larger than the limit of {MAX_BODY_BYTES} allowed by server.")]
    BodyTooLarge(u64),
    #[error("Transfer-Encoding {0:?} is not supported: send the body with a Content-Length.")]
    TransferEncoding(String),
    #[error("Invalid status line {0:?}.")]
    StatusLine(String),
    #[error("Response body of {0} bytes is larger than the client's limit of {MAX_RESPONSE_BODY_BYTES}.")]
    ResponseTooLarge(u64),
    #[error("The response has no Content-Length.")]
    NoContentLength,
}

/// A parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRequest {
    /// As sent (methods are case-sensitive: `put` is not `PUT`).
    pub method: String,
    /// The path, without any `?query`.
    pub path: String,
    /// Empty when the request has no body (or an empty one).
    pub body: Vec<u8>,
    /// Whether the connection stays open after the response.
    pub keep_alive: bool,
}

/// The outcome of parsing the bytes received so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed<T> {
    /// More bytes needed. `expect_continue`: the head is complete and
    /// the client waits for `100 Continue` before sending the body.
    Incomplete { expect_continue: bool },
    /// A whole message, which took the first `consumed` bytes.
    Complete { message: T, consumed: usize },
}

/// Headers of a message: the ones the API cares about.
#[derive(Debug, Default)]
struct Head {
    content_length: Option<u64>,
    transfer_encoding: Option<String>,
    connection_close: bool,
    connection_keep_alive: bool,
    expect_continue: bool,
}

/// Finds the end of the head (`\r\n\r\n`): the index just past it.
fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Parses header lines (after the start line) into a [`Head`].
fn parse_headers<'a>(lines: impl Iterator<Item = &'a str>) -> Result<Head, HttpError> {
    let mut head = Head::default();
    for (n, line) in lines.enumerate() {
        if n >= MAX_HEADERS {
            return Err(HttpError::TooManyHeaders);
        }
        let (name, value) = line
            .split_once(':')
            .filter(|(name, _)| is_token(name))
            .ok_or_else(|| HttpError::Header(line.to_string()))?;
        let value = value.trim_matches([' ', '\t']);
        if value.bytes().any(|b| b.is_ascii_control() && b != b'\t') {
            return Err(HttpError::Header(line.to_string()));
        }
        match name.to_ascii_lowercase().as_str() {
            "content-length" => {
                let len = value
                    .parse::<u64>()
                    .ok()
                    .filter(|_| value.bytes().all(|b| b.is_ascii_digit()))
                    .ok_or_else(|| HttpError::ContentLength(value.to_string()))?;
                // Two different lengths are a request-smuggling classic.
                if head.content_length.is_some_and(|l| l != len) {
                    return Err(HttpError::ContentLength(value.to_string()));
                }
                head.content_length = Some(len);
            }
            "transfer-encoding" => head.transfer_encoding = Some(value.to_string()),
            "connection" => {
                for opt in value.split(',').map(|o| o.trim().to_ascii_lowercase()) {
                    match opt.as_str() {
                        "close" => head.connection_close = true,
                        "keep-alive" => head.connection_keep_alive = true,
                        _ => {}
                    }
                }
            }
            "expect" => head.expect_continue = value.eq_ignore_ascii_case("100-continue"),
            _ => {}
        }
    }
    Ok(head)
}

/// Splits a head into its lines: it must be ASCII-clean text.
fn head_lines(head: &[u8]) -> Result<Vec<&str>, HttpError> {
    let text = std::str::from_utf8(head)
        .map_err(|_| HttpError::Header("(bytes that are not UTF-8)".to_string()))?;
    // `head` ends with the blank line's CRLF CRLF; drop it.
    let text = text.strip_suffix("\r\n\r\n").unwrap_or(text);
    let lines: Vec<&str> = text.split("\r\n").collect();
    if let Some(bad) = lines.iter().find(|l| l.contains(['\r', '\n'])) {
        return Err(HttpError::Header(bad.to_string()));
    }
    Ok(lines)
}

/// Parses one request from the start of `buf`.
pub fn parse_request(buf: &[u8]) -> Result<Parsed<HttpRequest>, HttpError> {
    // Refuse a request line that cannot become valid at once, rather
    // than after the timeout: it is visible ASCII and spaces, ended by CRLF.
    let line_end = buf
        .iter()
        .position(|&b| !(0x20..0x7f).contains(&b))
        .unwrap_or(buf.len());
    if line_end < buf.len() && !buf[line_end..].starts_with(b"\r\n") && buf[line_end..] != *b"\r" {
        let shown = String::from_utf8_lossy(&buf[..(line_end + 1).min(80)]).into_owned();
        return Err(HttpError::RequestLine(shown));
    }
    let Some(end) = head_end(&buf[..buf.len().min(MAX_HEAD_BYTES + 4)]) else {
        if buf.len() > MAX_HEAD_BYTES {
            return Err(HttpError::HeadTooLarge);
        }
        return Ok(Parsed::Incomplete {
            expect_continue: false,
        });
    };
    if end > MAX_HEAD_BYTES {
        return Err(HttpError::HeadTooLarge);
    }
    let lines = head_lines(&buf[..end])?;
    let request_line = lines[0];
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HttpError::RequestLine(request_line.to_string()));
    };
    if !is_token(method) || !target.starts_with('/') {
        return Err(HttpError::RequestLine(request_line.to_string()));
    }
    let http10 = match version {
        "HTTP/1.1" => false,
        "HTTP/1.0" => true,
        other => return Err(HttpError::Version(other.to_string())),
    };
    let head = parse_headers(lines[1..].iter().copied())?;
    if let Some(te) = head.transfer_encoding {
        return Err(HttpError::TransferEncoding(te));
    }
    let len = head.content_length.unwrap_or(0);
    if len > MAX_BODY_BYTES as u64 {
        return Err(HttpError::BodyTooLarge(len));
    }
    let total = end + len as usize;
    if buf.len() < total {
        return Ok(Parsed::Incomplete {
            expect_continue: head.expect_continue && !http10,
        });
    }
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    let keep_alive = if http10 {
        head.connection_keep_alive
    } else {
        !head.connection_close
    };
    Ok(Parsed::Complete {
        message: HttpRequest {
            method: method.to_string(),
            path: path.to_string(),
            body: buf[end..total].to_vec(),
            keep_alive,
        },
        consumed: total,
    })
}

/// A parsed response (client side).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    pub body: Vec<u8>,
    /// The server keeps the connection open.
    pub keep_alive: bool,
}

/// Parses one response from the start of `buf`. `100 Continue` interim
/// responses are returned like any other (the client skips them).
pub fn parse_response(buf: &[u8]) -> Result<Parsed<HttpResponse>, HttpError> {
    let Some(end) = head_end(&buf[..buf.len().min(MAX_HEAD_BYTES + 4)]) else {
        if buf.len() > MAX_HEAD_BYTES {
            return Err(HttpError::HeadTooLarge);
        }
        return Ok(Parsed::Incomplete {
            expect_continue: false,
        });
    };
    let lines = head_lines(&buf[..end])?;
    let status_line = lines[0];
    let mut parts = status_line.splitn(3, ' ');
    let (Some(version), Some(code)) = (parts.next(), parts.next()) else {
        return Err(HttpError::StatusLine(status_line.to_string()));
    };
    let status = code
        .parse::<u16>()
        .ok()
        .filter(|c| (100..600).contains(c) && code.len() == 3)
        .ok_or_else(|| HttpError::StatusLine(status_line.to_string()))?;
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(HttpError::Version(version.to_string()));
    }
    let head = parse_headers(lines[1..].iter().copied())?;
    let len = if (100..200).contains(&status) || status == 204 || status == 304 {
        0
    } else {
        head.content_length.ok_or(HttpError::NoContentLength)?
    };
    if len > MAX_RESPONSE_BODY_BYTES as u64 {
        return Err(HttpError::ResponseTooLarge(len));
    }
    let total = end + len as usize;
    if buf.len() < total {
        return Ok(Parsed::Incomplete {
            expect_continue: false,
        });
    }
    Ok(Parsed::Complete {
        message: HttpResponse {
            status,
            body: buf[end..total].to_vec(),
            keep_alive: version == "HTTP/1.1" && !head.connection_close,
        },
        consumed: total,
    })
}

fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Payload Too Large",
        500 => "Internal Server Error",
        _ => "Unknown",
    }
}

/// Writes a response; a JSON `body` gets its Content-Type and length.
pub fn write_response(
    w: &mut impl Write,
    status: u16,
    body: Option<&str>,
    keep_alive: bool,
) -> io::Result<()> {
    let mut out = format!(
        "HTTP/1.1 {status} {}\r\nServer: virtkit\r\n",
        reason(status)
    );
    if !keep_alive {
        out.push_str("Connection: close\r\n");
    }
    match body {
        Some(body) => {
            out.push_str("Content-Type: application/json\r\n");
            out.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
            out.push_str(body);
        }
        // 204 has no body and, per RFC 9110, no Content-Length either.
        None if status == 204 => out.push_str("\r\n"),
        None => out.push_str("Content-Length: 0\r\n\r\n"),
    }
    w.write_all(out.as_bytes())?;
    w.flush()
}

/// Writes the interim response a client waits for after `Expect: 100-continue`.
pub fn write_continue(w: &mut impl Write) -> io::Result<()> {
    w.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
    w.flush()
}

/// Writes a request with an optional JSON body.
pub fn write_request(
    w: &mut impl Write,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> io::Result<()> {
    let mut out =
        format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n");
    if let Some(body) = body {
        out.push_str("Content-Type: application/json\r\n");
        out.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        out.push_str(body);
    } else {
        out.push_str("\r\n");
    }
    w.write_all(out.as_bytes())?;
    w.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(buf: &[u8]) -> (HttpRequest, usize) {
        match parse_request(buf).unwrap() {
            Parsed::Complete { message, consumed } => (message, consumed),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn parses_a_put_with_body_and_a_pipelined_get() {
        let raw = b"PUT /actions HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n\r\nhelloGET / HTTP/1.1\r\n\r\n";
        let (req, used) = complete(raw);
        assert_eq!(req.method, "PUT");
        assert_eq!(req.path, "/actions");
        assert_eq!(req.body, b"hello");
        assert!(req.keep_alive);
        let (get, used2) = complete(&raw[used..]);
        assert_eq!((get.method.as_str(), get.path.as_str()), ("GET", "/"));
        assert_eq!(used + used2, raw.len());
    }

    #[test]
    fn incomplete_until_the_whole_body_is_there() {
        let raw = b"PUT /vm HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\nab";
        assert_eq!(
            parse_request(raw).unwrap(),
            Parsed::Incomplete {
                expect_continue: true
            }
        );
        assert_eq!(
            parse_request(b"GET / HTTP/1.1\r\n").unwrap(),
            Parsed::Incomplete {
                expect_continue: false
            }
        );
    }

    #[test]
    fn http10_and_connection_close() {
        let (req, _) = complete(b"GET / HTTP/1.0\r\n\r\n");
        assert!(!req.keep_alive);
        let (req, _) = complete(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        assert!(req.keep_alive);
        let (req, _) = complete(b"GET /?x=1 HTTP/1.1\r\nConnection: close\r\n\r\n");
        assert!(!req.keep_alive);
        assert_eq!(req.path, "/");
    }

    #[test]
    fn rejects_malformed_and_oversized() {
        let bad: &[(&[u8], HttpError)] = &[
            (b"GET /\r\n\r\n", HttpError::RequestLine("GET /".into())),
            (
                b"GET  / HTTP/1.1\r\n\r\n",
                HttpError::RequestLine("GET  / HTTP/1.1".into()),
            ),
            (
                b"GET x HTTP/1.1\r\n\r\n",
                HttpError::RequestLine("GET x HTTP/1.1".into()),
            ),
            (
                b"GET / HTTP/2.0\r\n\r\n",
                HttpError::Version("HTTP/2.0".into()),
            ),
            (b"\xff\xfe", HttpError::RequestLine("\u{fffd}".into())),
            (b"GET /\n", HttpError::RequestLine("GET /\n".into())),
            (
                b"GET / HTTP/1.1\r\nNoColon\r\n\r\n",
                HttpError::Header("NoColon".into()),
            ),
            (
                b"GET / HTTP/1.1\r\nA b: c\r\n\r\n",
                HttpError::Header("A b: c".into()),
            ),
            (
                b"PUT / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
                HttpError::ContentLength("-1".into()),
            ),
            (
                b"PUT / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                HttpError::ContentLength("2".into()),
            ),
            (
                b"PUT / HTTP/1.1\r\nContent-Length: 65537\r\n\r\n",
                HttpError::BodyTooLarge(65537),
            ),
            (
                b"PUT / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n",
                HttpError::ContentLength("99999999999999999999999".into()),
            ),
            (
                b"PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
                HttpError::TransferEncoding("chunked".into()),
            ),
        ];
        for (raw, want) in bad {
            assert_eq!(
                parse_request(raw).as_ref(),
                Err(want),
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("X-{i}: y\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(parse_request(&many), Err(HttpError::TooManyHeaders));
        let long = vec![b'a'; MAX_HEAD_BYTES + 1];
        assert_eq!(parse_request(&long), Err(HttpError::HeadTooLarge));
    }

    #[test]
    fn response_round_trip() {
        let mut out = Vec::new();
        write_response(&mut out, 400, Some("{\"fault_message\":\"x\"}"), true).unwrap();
        write_response(&mut out, 204, None, false).unwrap();
        let Parsed::Complete { message, consumed } = parse_response(&out).unwrap() else {
            panic!()
        };
        assert_eq!(message.status, 400);
        assert_eq!(message.body, b"{\"fault_message\":\"x\"}");
        assert!(message.keep_alive);
        let Parsed::Complete { message, .. } = parse_response(&out[consumed..]).unwrap() else {
            panic!()
        };
        assert_eq!((message.status, message.keep_alive), (204, false));
        assert!(message.body.is_empty());
    }
}
