//! Issue 14, point 6: idle and slowloris connections cannot starve `/live` and `/ready`.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};
use strait_admin::{AdminOptions, Metrics};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn start(options: AdminOptions) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let metrics = Metrics::new("core");
    metrics.set_ready_probe(|| true);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (addr, fut) =
        strait_admin::serve("127.0.0.1:0".parse().unwrap(), metrics, options, async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    tokio::spawn(fut);
    (addr, stop)
}

/// One `GET path` on a fresh connection; the status line.
async fn get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    let mut c = TcpStream::connect(addr).await?;
    c.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut out = Vec::new();
    c.read_to_end(&mut out).await?;
    let text = String::from_utf8_lossy(&out);
    Ok(text.lines().next().unwrap_or("").to_string())
}

/// Whether the server has closed `c` (EOF or reset) within `wait`.
async fn closed_within(c: &mut TcpStream, wait: Duration) -> bool {
    let mut b = [0u8; 64];
    match tokio::time::timeout(wait, c.read(&mut b)).await {
        Ok(Ok(0)) | Ok(Err(_)) => true,
        Ok(Ok(_)) | Err(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_answers_within_a_second_under_200_idle_connections_and_a_slowloris() {
    let options = AdminOptions::default();
    let (addr, _stop) = start(options).await;
    let mut idle = Vec::new();
    for _ in 0..200 {
        idle.push(TcpStream::connect(addr).await.unwrap());
    }
    // A slowloris: one header byte per second, for as long as the test runs.
    let slow = tokio::spawn(async move {
        let mut c = TcpStream::connect(addr).await.unwrap();
        for b in b"GET /live HTTP/1.1\r\nHost: admin\r\n".iter().cycle() {
            if c.write_all(&[*b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    for path in ["/live", "/ready"] {
        let started = Instant::now();
        let status = tokio::time::timeout(Duration::from_secs(1), get(addr, path))
            .await
            .unwrap_or_else(|_| panic!("{path} did not answer within a second"))
            .unwrap();
        assert_eq!(status, "HTTP/1.1 200 OK", "{path}");
        assert!(started.elapsed() < Duration::from_secs(1));
        println!(
            "{path} answered in {:?} under 200 idle connections",
            started.elapsed()
        );
    }
    // The server holds at most its cap: the oldest idle connections were closed to make room.
    let mut closed = 0;
    for c in &mut idle {
        if closed_within(c, Duration::from_millis(20)).await {
            closed += 1;
        }
    }
    println!("{closed} of 200 idle connections closed by the server");
    assert!(
        closed >= 200 - options.max_connections,
        "only {closed} of 200 idle connections were closed; the cap is {}",
        options.max_connections
    );
    slow.abort();
}

#[tokio::test]
async fn header_read_timeout_closes_a_slowloris_and_an_idle_connection() {
    let (addr, _stop) = start(AdminOptions {
        max_connections: 64,
        header_read_timeout: Duration::from_millis(300),
    })
    .await;
    let mut idle = TcpStream::connect(addr).await.unwrap();
    let mut slow = TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(5);
    let (mut idle_closed, mut slow_closed) = (false, false);
    let head = b"GET /live HTTP/1.1\r\nHost: admin\r\n";
    let mut sent = 0;
    while !(idle_closed && slow_closed) && Instant::now() < deadline {
        if !slow_closed && sent < head.len() && slow.write_all(&head[sent..sent + 1]).await.is_ok()
        {
            sent += 1;
        }
        idle_closed = idle_closed || closed_within(&mut idle, Duration::from_millis(50)).await;
        slow_closed = slow_closed || closed_within(&mut slow, Duration::from_millis(50)).await;
    }
    assert!(
        idle_closed,
        "a connection that sent nothing was never closed"
    );
    assert!(
        slow_closed,
        "a slowloris was never closed ({sent} bytes sent)"
    );
    assert!(
        sent < head.len(),
        "the slowloris finished its head before the timeout"
    );
    assert_eq!(get(addr, "/live").await.unwrap(), "HTTP/1.1 200 OK");
}
