//! The HTTP endpoint: `/metrics` (Prometheus text), `/healthz` (process alive), `/readyz`
//! (database reachable and clusters loaded); anything else is 404, a method other than GET or
//! HEAD is 405, a request announcing a body over `limits::HTTP_REQUEST_BYTES_MAX` is 413. One
//! thread answers, in order; tiny_http's own accept thread is not ours to name.

use crate::context::Context;
use crate::limits;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tiny_http::{Header, Method, Response, Server};

pub fn bind(port: u16) -> Result<Server, String> {
    Server::http(("0.0.0.0", port)).map_err(|e| format!("cannot listen on 0.0.0.0:{port}: {e}"))
}

fn text(status: u16, body: String, content_type: &str) -> Response<std::io::Cursor<Vec<u8>>> {
    let header = Header::from_bytes(&b"Content-Type"[..], content_type.as_bytes()).expect("static header");
    Response::from_string(body).with_status_code(status).with_header(header)
}

pub fn serve(ctx: &Context, server: Server) {
    while !ctx.stopping() {
        let request = match server.recv_timeout(Duration::from_millis(limits::SHUTDOWN_POLL_MS)) {
            Ok(Some(request)) => request,
            Ok(None) => continue,
            Err(e) => {
                warn!("metrics server: {e}");
                continue;
            }
        };
        let too_big = request.body_length().is_some_and(|n| n > limits::HTTP_REQUEST_BYTES_MAX);
        let path = request.url().split('?').next().unwrap_or("").to_string();
        let response = if too_big {
            text(413, "request too large\n".into(), "text/plain")
        } else if *request.method() != Method::Get && *request.method() != Method::Head {
            text(405, "method not allowed\n".into(), "text/plain")
        } else {
            route(ctx, &path)
        };
        if let Err(e) = request.respond(response) {
            debug!("metrics server: could not answer {path}: {e}");
        }
    }
}

fn route(ctx: &Context, path: &str) -> Response<std::io::Cursor<Vec<u8>>> {
    match path {
        "/metrics" => match ctx.metrics.encode() {
            Ok(body) => text(200, body, "text/plain; version=0.0.4"),
            Err(e) => text(500, format!("cannot encode metrics: {e}\n"), "text/plain"),
        },
        "/healthz" => text(200, "ok\n".into(), "text/plain"),
        "/readyz" => {
            let db = ctx.db_reachable.load(Ordering::Relaxed);
            let clusters = ctx.clusters_loaded.load(Ordering::Relaxed);
            if db && clusters {
                text(200, "ready\n".into(), "text/plain")
            } else {
                text(503, format!("not ready: database_reachable={db} clusters_loaded={clusters}\n"), "text/plain")
            }
        }
        _ => text(404, "not found\n".into(), "text/plain"),
    }
}
