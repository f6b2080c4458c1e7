//! The least user-space work a proxy's event loop can do per transaction: a
//! 1:1 byte relay (one server connection per client, no pooling, no parsing)
//! on one thread, built three ways, for `benches/e2e/relay-floor.sh` to count
//! with callgrind against pgtenant's and PgBouncer's counts.
//!
//!   epoll  a raw epoll loop: one `epoll_wait`, then one `recv` and one `send`
//!          per ready socket, made directly (rustix), as PgBouncer's libevent
//!          loop does
//!   tokio  tokio's current-thread runtime, one task per client running
//!          `tokio::io::copy_bidirectional`: the reactor pgtenant is built on
//!   tokio-ready  the same runtime, one task per client waiting on both
//!          sockets' readiness futures, then non-blocking reads and writes
//!
//! usage: relay_floor epoll|tokio|tokio-ready LISTEN UPSTREAM

use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsFd, OwnedFd};

use rustix::event::{PollFd, PollFlags, epoll};
use rustix::io::Errno;
use rustix::net::{RecvFlags, SendFlags};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [mode, listen, upstream] = &args[..] else {
        eprintln!("usage: relay_floor epoll|tokio|tokio-ready LISTEN UPSTREAM");
        std::process::exit(2);
    };
    match mode.as_str() {
        "epoll" => raw_epoll(listen, upstream),
        "tokio" => on_tokio(listen, upstream, false),
        "tokio-ready" => on_tokio(listen, upstream, true),
        _ => {
            eprintln!("mode is epoll, tokio or tokio-ready");
            std::process::exit(2);
        }
    }
}

/// Token of the listening socket; a connection's sockets are `2i` (client)
/// and `2i + 1` (its server), so a socket's peer is `token ^ 1`.
const LISTENER: u64 = u64::MAX;

fn raw_epoll(listen: &str, upstream: &str) {
    let listener = TcpListener::bind(listen).expect("bind");
    listener.set_nonblocking(true).expect("non-blocking");
    let ep = epoll::create(epoll::CreateFlags::CLOEXEC).expect("epoll");
    let watch = |fd: &dyn AsFd, token: u64| {
        epoll::add(
            &ep,
            fd.as_fd(),
            epoll::EventData::new_u64(token),
            epoll::EventFlags::IN,
        )
        .expect("epoll_ctl");
    };
    watch(&listener, LISTENER);
    let mut sockets: Vec<Option<OwnedFd>> = Vec::new();
    let mut events: Vec<epoll::Event> = Vec::with_capacity(64);
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        events.clear();
        epoll::wait(&ep, rustix::buffer::spare_capacity(&mut events), None).expect("epoll_wait");
        for event in &events {
            let token = event.data.u64();
            if token == LISTENER {
                while let Ok((client, _)) = listener.accept() {
                    let server = TcpStream::connect(upstream).expect("connect upstream");
                    for s in [&client, &server] {
                        s.set_nodelay(true).expect("nodelay");
                        s.set_nonblocking(true).expect("non-blocking");
                    }
                    let i = sockets.len() as u64;
                    let (client, server) = (OwnedFd::from(client), OwnedFd::from(server));
                    watch(&client, i);
                    watch(&server, i + 1);
                    sockets.push(Some(client));
                    sockets.push(Some(server));
                }
                continue;
            }
            let (from, to) = (token as usize, token as usize ^ 1);
            let (Some(src), Some(dst)) = (&sockets[from], &sockets[to]) else {
                continue;
            };
            let n = match rustix::net::recv(src, &mut buf[..], RecvFlags::empty()) {
                Ok((n, _)) => n,
                Err(Errno::AGAIN) => continue,
                Err(_) => 0,
            };
            if n == 0 || !send_all(dst, &buf[..n]) {
                // Closing both ends takes them out of the epoll set.
                sockets[from] = None;
                sockets[to] = None;
            }
        }
    }
}

/// Writes all of `bytes`, waiting for room when the socket is full (rare
/// for the short replies measured here).
fn send_all(fd: &OwnedFd, mut bytes: &[u8]) -> bool {
    while !bytes.is_empty() {
        match rustix::net::send(fd, bytes, SendFlags::NOSIGNAL) {
            Ok(n) => bytes = &bytes[n..],
            Err(Errno::AGAIN) => {
                let mut wait = [PollFd::new(fd, PollFlags::OUT)];
                if rustix::event::poll(&mut wait, None).is_err() {
                    return false;
                }
            }
            Err(_) => return false,
        }
    }
    true
}

fn on_tokio(listen: &str, upstream: &str, readiness: bool) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(listen).await.expect("bind");
        loop {
            let (mut client, _) = listener.accept().await.expect("accept");
            let upstream = upstream.to_owned();
            tokio::spawn(async move {
                let mut server = tokio::net::TcpStream::connect(upstream)
                    .await
                    .expect("connect upstream");
                client.set_nodelay(true).expect("nodelay");
                server.set_nodelay(true).expect("nodelay");
                if readiness {
                    by_readiness(&client, &server).await;
                } else {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
            });
        }
    });
}

/// Until either side closes: wait for a socket to be readable, read what it
/// has, write it all to the other.
async fn by_readiness(client: &tokio::net::TcpStream, server: &tokio::net::TcpStream) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let (from, to) = tokio::select! {
            biased;
            ready = server.readable() => { if ready.is_err() { return } (server, client) }
            ready = client.readable() => { if ready.is_err() { return } (client, server) }
        };
        let n = match from.try_read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(_) => return,
        };
        let mut sent = 0;
        while sent < n {
            match to.try_write(&buf[sent..n]) {
                Ok(k) => sent += k,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if to.writable().await.is_err() {
                        return;
                    }
                }
                Err(_) => return,
            }
        }
    }
}
