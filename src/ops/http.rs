//! The HTTP endpoint: `/metrics` (Prometheus text), `/healthz` (process alive), `/readyz`
//! (database reachable, clusters loaded, every pipeline thread alive); anything else is 404, a
//! method other than GET or HEAD is 405, a request that announces a body over
//! `limits::HTTP_REQUEST_BYTES_MAX` is 413, a request head over `limits::HTTP_HEAD_BYTES_MAX`
//! is 431.
//!
//! It listens on all interfaces without authentication, as Prometheus exporters do, so it
//! assumes any client is hostile. One thread (`metrics-http`) multiplexes every connection
//! with `poll(2)`:
//! - no body is ever read, and nothing is allocated from what a client announces;
//! - at most `limits::HTTP_CONNECTIONS_MAX` connections are open; a new one beyond that evicts
//!   the oldest that has not finished its request, so idle connections cannot lock others out;
//! - a connection that has not sent a whole request head within `limits::HTTP_READ_TIMEOUT_MS`,
//!   or not taken its answer within `limits::HTTP_WRITE_TIMEOUT_MS`, is closed;
//! - an accept that fails (EMFILE, ENFILE, ENOBUFS …) is logged once a minute and retried after
//!   a pause; the listener never dies;
//! - it stops accepting while fewer than `limits::FDS_RESERVED_FOR_PIPELINE_MIN` descriptors (or
//!   an eighth of the limit) are free, so clients wait in the listen backlog rather than take the descriptors PostgreSQL
//!   connections and gRPC need (gRPC aborts the process when it cannot make its pollers).
//!
//! tiny_http could not give these guarantees (a thread per connection, no idle timeout, and a
//! dropped request that announced a huge body aborts the process), so this small server
//! replaces it.

use crate::pipeline::context::Context;
use crate::limits;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

pub struct Server {
    listener: TcpListener,
}

impl Server {
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }
}

pub fn bind(address: &str, port: u16) -> Result<Server, String> {
    let listener = TcpListener::bind((address, port)).map_err(|e| format!("cannot listen on {address}:{port}: {e}"))?;
    listener.set_nonblocking(true).map_err(|e| format!("cannot listen on {address}:{port}: {e}"))?;
    Ok(Server { listener })
}

struct Conn {
    stream: TcpStream,
    opened: Instant,
    head: Vec<u8>,
    /// The answer, once the request head is complete; `sent` bytes of it are written.
    answer: Option<Vec<u8>>,
    sent: usize,
    answered_at: Option<Instant>,
}

/// Serves until the pipeline stops.
pub fn serve(ctx: &Context, server: Server) {
    let mut conns: Vec<Conn> = Vec::new();
    let mut accept_pause_until: Option<Instant> = None;
    let mut last_accept_error_log: Option<Instant> = None;
    while !ctx.stopping() {
        let now = Instant::now();
        let accepting = accept_pause_until.is_none_or(|t| now >= t);
        let mut fds: Vec<libc::pollfd> = Vec::with_capacity(conns.len() + 1);
        fds.push(libc::pollfd { fd: server.listener.as_raw_fd(), events: if accepting { libc::POLLIN } else { 0 }, revents: 0 });
        for c in &conns {
            let events = if c.answer.is_some() { libc::POLLOUT } else { libc::POLLIN };
            fds.push(libc::pollfd { fd: c.stream.as_raw_fd(), events, revents: 0 });
        }
        // SAFETY: `fds` is a valid array of pollfd for its whole length during the call.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, limits::SHUTDOWN_POLL_MS as i32) };
        if ready < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != ErrorKind::Interrupted {
                warn!("metrics server: poll failed: {e}");
                std::thread::sleep(Duration::from_millis(limits::SHUTDOWN_POLL_MS));
            }
            continue;
        }
        // Existing connections first (their slots may free room for new ones).
        let mut keep = Vec::with_capacity(conns.len());
        for (i, mut c) in conns.into_iter().enumerate() {
            let revents = fds.get(i + 1).map_or(0, |f| f.revents);
            if step(ctx, &mut c, revents) {
                keep.push(c);
            }
        }
        conns = keep;
        if accepting && fds[0].revents != 0 {
            for _ in 0..limits::HTTP_ACCEPTS_PER_ROUND_MAX {
                if !crate::ops::fds::room_for_http() {
                    // Leave the last descriptors to the pipeline; clients wait in the backlog.
                    if last_accept_error_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                        warn!("metrics server: few descriptors free; pausing accepts to leave them to the pipeline");
                        last_accept_error_log = Some(Instant::now());
                    }
                    accept_pause_until = Some(Instant::now() + Duration::from_millis(limits::HTTP_ACCEPT_ERROR_PAUSE_MS));
                    break;
                }
                match server.listener.accept() {
                    Ok((stream, _)) => {
                        if stream.set_nonblocking(true).is_err() {
                            continue;
                        }
                        if conns.len() >= limits::HTTP_CONNECTIONS_MAX {
                            // Evict the oldest connection that has not sent a whole request.
                            let victim = conns.iter().enumerate().filter(|(_, c)| c.answer.is_none()).min_by_key(|(_, c)| c.opened).map(|(i, _)| i);
                            match victim {
                                Some(i) => {
                                    conns.swap_remove(i);
                                    ctx.metrics.http_connections_dropped_total.with_label_values(&["evicted"]).inc();
                                }
                                None => {
                                    ctx.metrics.http_connections_dropped_total.with_label_values(&["full"]).inc();
                                    continue;
                                }
                            }
                        }
                        conns.push(Conn { stream, opened: Instant::now(), head: Vec::new(), answer: None, sent: 0, answered_at: None });
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted || e.kind() == ErrorKind::ConnectionAborted => continue,
                    Err(e) => {
                        // Out of descriptors or buffers: wait a little, keep listening.
                        ctx.count_error("http");
                        if last_accept_error_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                            warn!("metrics server: accept failed ({e}); pausing accepts, still listening");
                            last_accept_error_log = Some(Instant::now());
                        }
                        accept_pause_until = Some(Instant::now() + Duration::from_millis(limits::HTTP_ACCEPT_ERROR_PAUSE_MS));
                        break;
                    }
                }
            }
        }
        // Deadlines.
        let now = Instant::now();
        conns.retain(|c| match c.answered_at {
            None => now.duration_since(c.opened) < Duration::from_millis(limits::HTTP_READ_TIMEOUT_MS),
            Some(t) => now.duration_since(t) < Duration::from_millis(limits::HTTP_WRITE_TIMEOUT_MS),
        });
        ctx.metrics.http_connections_open.set(conns.len() as i64);
    }
}

/// Advances one connection; false when it is done (answered or failed) and must be closed.
fn step(ctx: &Context, c: &mut Conn, revents: i16) -> bool {
    if revents & (libc::POLLERR | libc::POLLNVAL) != 0 {
        return false;
    }
    if c.answer.is_none() {
        if revents & (libc::POLLIN | libc::POLLHUP) == 0 {
            return true;
        }
        let mut buf = [0u8; 2048];
        loop {
            match c.stream.read(&mut buf) {
                Ok(0) => return false,
                Ok(n) => {
                    let room = limits::HTTP_HEAD_BYTES_MAX.saturating_sub(c.head.len());
                    c.head.extend_from_slice(&buf[..n.min(room + 4)]);
                    if let Some(end) = find_head_end(&c.head) {
                        c.head.truncate(end);
                        c.answer = Some(answer(ctx, &c.head));
                        c.answered_at = Some(Instant::now());
                        break;
                    }
                    if c.head.len() > limits::HTTP_HEAD_BYTES_MAX {
                        c.answer = Some(response(431, "request header fields too large\n", "text/plain", false));
                        c.answered_at = Some(Instant::now());
                        break;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return false,
            }
        }
    }
    let Some(answer) = &c.answer else { return true };
    loop {
        match c.stream.write(&answer[c.sent..]) {
            Ok(0) => return false,
            Ok(n) => {
                c.sent += n;
                if c.sent >= answer.len() {
                    let _ = c.stream.shutdown(std::net::Shutdown::Write);
                    return false;
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return false,
        }
    }
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4).or_else(|| buf.windows(2).position(|w| w == b"\n\n").map(|p| p + 2))
}

/// The answer to a complete request head.
fn answer(ctx: &Context, head: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.lines();
    let request_line = lines.next().unwrap_or("");
    let mut parts = request_line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if method.is_empty() || target.is_empty() {
        return response(400, "bad request\n", "text/plain", false);
    }
    let head_only = method == "HEAD";
    let too_big = lines.any(|l| {
        let Some((name, value)) = l.split_once(':') else { return false };
        if name.trim().eq_ignore_ascii_case("content-length") {
            value.trim().parse::<u128>().map_or(true, |n| n > limits::HTTP_REQUEST_BYTES_MAX as u128)
        } else {
            name.trim().eq_ignore_ascii_case("transfer-encoding")
        }
    });
    if too_big {
        return response(413, "request too large\n", "text/plain", head_only);
    }
    if method != "GET" && !head_only {
        return response(405, "method not allowed\n", "text/plain", false);
    }
    let path = target.split('?').next().unwrap_or("");
    match path {
        "/metrics" => match ctx.metrics.encode() {
            Ok(body) => response(200, &body, "text/plain; version=0.0.4", head_only),
            Err(e) => response(500, &format!("cannot encode metrics: {e}\n"), "text/plain", head_only),
        },
        "/healthz" => response(200, "ok\n", "text/plain", head_only),
        "/status" => response(200, &ctx.ownership_status().to_json(), "application/json", head_only),
        "/policy" => response(200, &crate::matching::policy::render_status(&ctx.policy, std::time::Instant::now()), "text/plain", head_only),
        "/readyz" => match ctx.readiness() {
            Ok(()) => response(200, "ready\n", "text/plain", head_only),
            Err(why) => response(503, &format!("not ready: {why}\n"), "text/plain", head_only),
        },
        _ => response(404, "not found\n", "text/plain", head_only),
    }
}

fn response(status: u16, body: &str, content_type: &str, head_only: bool) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        _ => "Service Unavailable",
    };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body.as_bytes());
    }
    out
}
