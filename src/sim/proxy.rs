//! A TCP proxy in front of PostgreSQL for fault tests: it reads the client's protocol messages
//! and, when armed, cuts the connection exactly at the next COMMIT — after forwarding it (the
//! server commits, the client never hears) or instead of forwarding it (the server rolls back).

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// What the proxy does to the next COMMIT a client sends.
pub const PASS: u8 = 0;
/// Forward the COMMIT, let the server commit, then cut the connection before the answer.
pub const CUT_AFTER_COMMIT: u8 = 1;
/// Cut the connection instead of forwarding the COMMIT (the server rolls back).
pub const CUT_INSTEAD_OF_COMMIT: u8 = 2;

/// A TCP proxy in front of PostgreSQL that reads the client's protocol messages and can cut
/// the connection exactly at a COMMIT.
pub struct CommitCutter {
    pub port: u16,
    mode: Arc<AtomicU8>,
}

impl CommitCutter {
    pub fn start(upstream_port: u16) -> std::io::Result<CommitCutter> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let mode = Arc::new(AtomicU8::new(PASS));
        let m = Arc::clone(&mode);
        std::thread::Builder::new()
            .name("commit-cutter".into())
            .spawn(move || {
                for client in listener.incoming().flatten() {
                    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream_port)) else { continue };
                    let m = Arc::clone(&m);
                    std::thread::spawn(move || relay(client, server, &m));
                }
            })
            ?;
        Ok(CommitCutter { port, mode })
    }

    pub fn arm(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
    }
}

fn relay(mut client: TcpStream, server: TcpStream, mode: &AtomicU8) {
    let (Ok(mut up), Ok(mut down_to)) = (server.try_clone(), client.try_clone()) else { return };
    let mut down_from = server;
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut down_from, &mut down_to);
        let _ = down_to.shutdown(Shutdown::Both);
    });
    // The startup message has no type byte: a length, then the body.
    let mut len = [0u8; 4];
    if client.read_exact(&mut len).is_err() {
        return;
    }
    let mut body = vec![0u8; (u32::from_be_bytes(len) as usize).saturating_sub(4)];
    if client.read_exact(&mut body).is_err() || up.write_all(&len).is_err() || up.write_all(&body).is_err() {
        return;
    }
    loop {
        let mut head = [0u8; 5];
        if client.read_exact(&mut head).is_err() {
            let _ = up.shutdown(Shutdown::Both);
            return;
        }
        let size = (u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize).saturating_sub(4);
        let mut body = vec![0u8; size];
        if client.read_exact(&mut body).is_err() {
            return;
        }
        let is_commit = head[0] == b'Q' && body.starts_with(b"COMMIT");
        let armed = is_commit && mode.load(Ordering::SeqCst) != PASS;
        if armed && mode.swap(PASS, Ordering::SeqCst) == CUT_INSTEAD_OF_COMMIT {
            let _ = up.shutdown(Shutdown::Both);
            let _ = client.shutdown(Shutdown::Both);
            return;
        }
        if up.write_all(&head).is_err() || up.write_all(&body).is_err() {
            return;
        }
        if armed {
            std::thread::sleep(Duration::from_millis(300)); // the server commits meanwhile
            let _ = up.shutdown(Shutdown::Both);
            let _ = client.shutdown(Shutdown::Both);
            return;
        }
    }
}

