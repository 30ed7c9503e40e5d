//! A 200 MB PUT streams through the route with bounded memory. Its own test binary, so the
//! process's peak RSS belongs to this test alone.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Instant;

use support::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

const SIZE: u64 = 200 * 1024 * 1024;

fn peak_rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// PUT `SIZE` seeded bytes (Content-Length or chunked framing) and return the origin's answer.
async fn put(addr: std::net::SocketAddr, chunked: bool) -> String {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (r, mut w) = tcp.into_split();
    let framing = if chunked {
        "transfer-encoding: chunked".to_string()
    } else {
        format!("content-length: {SIZE}")
    };
    w.write_all(format!("PUT /big HTTP/1.1\r\nhost: {addr}\r\n{framing}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let writer = tokio::spawn(async move {
        let mut off = 0u64;
        while off < SIZE {
            let n = (SIZE - off).min(1 << 20) as usize;
            let data = blob(42, off, n);
            if chunked {
                w.write_all(format!("{n:x}\r\n").as_bytes()).await.unwrap();
                w.write_all(&data).await.unwrap();
                w.write_all(b"\r\n").await.unwrap();
            } else {
                w.write_all(&data).await.unwrap();
            }
            off += n as u64;
        }
        if chunked {
            w.write_all(b"0\r\n\r\n").await.unwrap();
        }
        w
    });
    let mut r = BufReader::new(r);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        r.read_line(&mut line).await.unwrap();
        head.push_str(&line);
        if line == "\r\n" || line.is_empty() {
            break;
        }
    }
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.to_lowercase()
                .strip_prefix("content-length: ")
                .map(|v| v.trim().parse().unwrap())
        })
        .unwrap();
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await.unwrap();
    let _ = writer.await.unwrap();
    String::from_utf8(body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_of_200_mb_streams_through_route_with_bounded_memory() {
    let origin = start_origin().await;
    let route = start_route(classifier(""), origin.addr).await;
    let want = format!("len={SIZE} blake3={}", blob_hash(42, SIZE));
    let before = peak_rss_kib();
    for chunked in [false, true] {
        let t = Instant::now();
        assert_eq!(put(route.addr, chunked).await, want);
        let secs = t.elapsed().as_secs_f64();
        eprintln!(
            "200 MiB PUT ({}) through route: {:.2} s, {:.0} MB/s",
            if chunked { "chunked" } else { "content-length" },
            secs,
            SIZE as f64 / secs / 1e6
        );
    }
    let grown = peak_rss_kib().saturating_sub(before);
    eprintln!("peak RSS growth: {grown} KiB");
    // Buffering the body would add 200 MiB; streaming needs a few frames per hop.
    assert!(grown < 48 * 1024, "peak RSS grew by {grown} KiB");
    let default = route
        .stats
        .classes
        .snapshot()
        .into_iter()
        .find(|s| s.class == "default")
        .unwrap();
    assert_eq!(default.logical_bytes, 2 * SIZE + 2 * want.len() as u64);
}
