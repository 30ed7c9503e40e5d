//! The forward proxy with real clients (curl, a hyper client, raw sockets).
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use support::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

#[tokio::test]
async fn curl_get_range_and_head_through_proxy_return_the_origin_bytes() {
    let origin = start_origin().await;
    let proxy = start_proxy(classifier("")).await;
    let url = format!("http://{}/blob/1000000/7", origin.addr);

    let mut c = curl();
    c.args(["-x", &proxy.url(), &url]);
    let out = run(c).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, blob(7, 0, 1_000_000));

    let mut c = curl();
    c.args(["-x", &proxy.url(), "-r", "1000-1999", &url]);
    let out = run(c).await;
    assert_eq!(out.stdout, blob(7, 1000, 1000));

    // HEAD keeps the Content-Length of the GET and carries no body.
    let mut c = curl();
    c.args(["-x", &proxy.url(), "-I", &url]);
    let out = run(c).await;
    let head = String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("content-length: 1000000"), "{head}");

    // Chunked download (no Content-Length from the origin).
    let mut c = curl();
    c.args([
        "-x",
        &proxy.url(),
        &format!("http://{}/chunked/300000/9", origin.addr),
    ]);
    assert_eq!(run(c).await.stdout, blob(9, 0, 300_000));

    let default = proxy
        .stats
        .classes
        .snapshot()
        .into_iter()
        .find(|s| s.class == "default")
        .unwrap();
    assert_eq!(default.requests, 4);
    assert_eq!(default.logical_bytes, 1_000_000 + 1000 + 300_000);
}

#[tokio::test]
async fn curl_chunked_upload_from_stdin_arrives_intact() {
    let origin = start_origin().await;
    let proxy = start_proxy(classifier("")).await;
    let data = blob(11, 0, 3_000_000);
    let path = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(path.path(), &data).unwrap();
    let mut c = curl();
    c.args([
        "-x",
        &proxy.url(),
        "-T",
        "-",
        &format!("http://{}/up", origin.addr),
    ])
    .stdin(std::fs::File::open(path.path()).unwrap());
    let out = run(c).await;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("len=3000000 blake3={}", blob_hash(11, 3_000_000))
    );
}

#[tokio::test]
async fn shadow_ai_request_is_denied_with_403_naming_the_host_and_never_connects() {
    let proxy = start_proxy(classifier("[ai]\nshadow_action = \"deny\"\n")).await;
    let mut c = curl();
    c.args([
        "-x",
        &proxy.url(),
        "-w",
        "\n%{http_code}",
        "-X",
        "POST",
        "-H",
        "content-type: application/json",
        "-d",
        "{\"model\":\"x\",\"messages\":[]}",
        "http://api.openai.com/v1/chat/completions",
    ]);
    let out = run(c).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.ends_with("\n403"), "{text}");
    assert!(text.contains("api.openai.com"), "{text}");
    assert!(text.contains("ai.sanctioned"), "{text}");
    assert_eq!(proxy.connects(), 0);
    let shadow = proxy
        .stats
        .classes
        .snapshot()
        .into_iter()
        .find(|s| s.class == "shadow-ai")
        .unwrap();
    assert_eq!(
        (shadow.requests, shadow.denied, shadow.shadow_ai),
        (1, 1, 1)
    );

    // CONNECT to the same host is refused too.
    let mut c = curl();
    c.args(["-x", &proxy.url(), "https://api.openai.com/v1/models"]);
    let out = run(c).await;
    assert!(!out.status.success());
    assert_eq!(proxy.connects(), 0);
}

#[tokio::test]
async fn keep_alive_client_connection_reuses_one_upstream_per_target() {
    let origin = start_origin().await;
    let other = start_origin().await;
    let proxy = start_proxy(classifier("")).await;
    let tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let get = |addr: std::net::SocketAddr, seed: u64| {
        hyper::Request::get(format!("http://{addr}/blob/5000/{seed}"))
            .header("host", addr.to_string())
            .body(Empty::<bytes::Bytes>::new())
            .unwrap()
    };
    for seed in 0..5 {
        send.ready().await.unwrap();
        let resp = send.send_request(get(origin.addr, seed)).await.unwrap();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body.as_ref(), blob(seed, 0, 5000).as_slice());
    }
    assert_eq!(proxy.connects(), 1);
    assert_eq!(origin.accepts.load(Relaxed), 1);
    assert_eq!(origin.requests.load(Relaxed), 5);
    // A different target needs its own upstream; going back opens another.
    for addr in [other.addr, origin.addr] {
        send.ready().await.unwrap();
        let resp = send.send_request(get(addr, 1)).await.unwrap();
        resp.into_body().collect().await.unwrap();
    }
    assert_eq!(proxy.connects(), 3);
}

/// Read one response head from a raw socket.
async fn read_head<R: tokio::io::AsyncBufRead + Unpin>(r: &mut R) -> String {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        assert!(
            r.read_line(&mut line).await.unwrap() > 0,
            "eof in head: {head}"
        );
        head.push_str(&line);
        if line == "\r\n" {
            return head;
        }
    }
}

#[tokio::test]
async fn expect_100_continue_gets_100_before_the_body_and_deny_before_any_body() {
    let origin = start_origin().await;
    let proxy = start_proxy(classifier("[ai]\nshadow_action = \"deny\"\n")).await;
    let tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let (r, mut w) = tcp.into_split();
    let mut r = BufReader::new(r);
    let body = blob(3, 0, 100_000);
    w.write_all(
        format!(
            "PUT http://{a}/up HTTP/1.1\r\nhost: {a}\r\ncontent-length: {}\r\nexpect: 100-continue\r\n\r\n",
            body.len(),
            a = origin.addr
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let head = read_head(&mut r).await;
    assert!(head.starts_with("HTTP/1.1 100 Continue"), "{head}");
    w.write_all(&body).await.unwrap();
    let head = read_head(&mut r).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.to_lowercase()
                .strip_prefix("content-length: ")
                .map(|v| v.trim().parse().unwrap())
        })
        .unwrap();
    let mut resp = vec![0u8; len];
    r.read_exact(&mut resp).await.unwrap();
    assert_eq!(
        String::from_utf8(resp).unwrap(),
        format!("len=100000 blake3={}", blob_hash(3, 100_000))
    );

    // Denied: 403 without a 100 first, so the client never sends the body.
    w.write_all(
        b"POST http://api.anthropic.com/v1/messages HTTP/1.1\r\nhost: api.anthropic.com\r\ncontent-length: 1000000\r\nexpect: 100-continue\r\n\r\n",
    )
    .await
    .unwrap();
    let head = read_head(&mut r).await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    assert_eq!(proxy.connects(), 1);
}

#[tokio::test]
async fn connect_tunnel_carries_tls_opaquely_and_counts_its_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let pki = test_pki(dir.path());
    let tls = start_tls_server(&pki, false).await;
    let proxy = start_proxy(classifier("")).await;
    let mut c = curl();
    c.args([
        "--cacert",
        pki.ca_pem.to_str().unwrap(),
        &format!("https://localhost:{}/", tls.port()),
    ])
    .env("https_proxy", proxy.url());
    let out = run(c).await;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello over tls",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(proxy.stats.connect_tunnels.load(Relaxed), 1);
    // Handshake plus one request and response: at least a certificate's worth of bytes.
    assert!(
        proxy.stats.connect_bytes() > 500,
        "{}",
        proxy.stats.connect_bytes()
    );
    let default = proxy
        .stats
        .classes
        .snapshot()
        .into_iter()
        .find(|s| s.class == "default")
        .unwrap();
    assert_eq!((default.flows, default.requests), (1, 0));
    let seen = proxy.connector.seen.lock().unwrap().clone();
    assert_eq!(
        seen[0].0,
        strait_http::Target::Origin {
            host: "localhost".into(),
            port: tls.port()
        }
    );
}

#[tokio::test]
async fn rate_capped_class_is_slowed_and_its_priority_reaches_the_connector() {
    let origin = start_origin().await;
    let cfg = "[[class]]\nname = \"capped\"\nrate_limit = \"4MB/s\"\npriority = 7\n\
               [[rule]]\nclass = \"capped\"\npath = \"/blob/*\"\n";
    let proxy = start_proxy(classifier(cfg)).await;
    let started = Instant::now();
    let mut c = curl();
    c.args([
        "-x",
        &proxy.url(),
        &format!("http://{}/blob/2000000/5", origin.addr),
    ]);
    let out = run(c).await;
    let took = started.elapsed();
    assert_eq!(out.stdout.len(), 2_000_000);
    // 2 MB at 4 MB/s with a 400 kB burst: at least 0.4 s.
    assert!(took >= Duration::from_millis(380), "{took:?}");
    assert_eq!(proxy.connector.seen.lock().unwrap()[0].1, 7);
    let capped = proxy
        .stats
        .classes
        .snapshot()
        .into_iter()
        .find(|s| s.class == "capped")
        .unwrap();
    assert_eq!(capped.logical_bytes, 2_000_000);
}

#[tokio::test]
async fn response_body_format_is_sniffed_into_the_model_class() {
    // A minimal safetensors file served by a one-shot origin.
    let header = br#"{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#;
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(header);
    file.extend_from_slice(&[0u8; 16]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let f = file.clone();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf).await.unwrap();
        let mut resp =
            format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", f.len()).into_bytes();
        resp.extend_from_slice(&f);
        s.write_all(&resp).await.unwrap();
    });
    let proxy = start_proxy(classifier("")).await;
    let mut c = curl();
    c.args(["-x", &proxy.url(), &format!("http://{addr}/m.safetensors")]);
    assert_eq!(run(c).await.stdout, file);
    let model = proxy
        .stats
        .classes
        .snapshot()
        .into_iter()
        .find(|s| s.class == "model")
        .unwrap();
    assert_eq!(model.logical_bytes, file.len() as u64);
    let st = strait_classify::Format::from_name("safetensors").unwrap();
    assert_eq!(proxy.stats.format_bytes(st), file.len() as u64);
    let fams = strait_http::class_metric_families(&proxy.stats.classes);
    assert!(fams.iter().any(|f| f.name == "class_logical_bytes_total"
        && f.samples
            .iter()
            .any(|(l, v)| l[0].1 == "model" && *v == file.len() as f64)));
    let own = proxy.stats.metric_families();
    assert!(own.iter().any(|f| f.name == "connect_bytes_total"));
}

#[tokio::test]
async fn shutdown_stops_accepting_and_serve_returns() {
    let proxy = start_proxy(classifier("")).await;
    proxy.shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), proxy.task)
        .await
        .unwrap()
        .unwrap();
    assert!(tokio::net::TcpStream::connect(proxy.addr).await.is_err());
}
