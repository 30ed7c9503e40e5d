//! Route mode with Python `requests`, and the core's TLS origination.
#![allow(clippy::unwrap_used)]

mod support;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn python_has(module: &str) -> bool {
    std::process::Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[tokio::test]
async fn python_requests_get_and_put_through_route_keep_host_and_headers() {
    if !python_has("requests") {
        eprintln!(
            "SKIP: python3 with `requests` not available (pip install -r tests/requirements.txt)"
        );
        return;
    }
    let origin = start_origin().await;
    let route = start_route(classifier(""), origin.addr).await;
    let script = r#"
import sys, requests, hashlib
base = sys.argv[1]
s = requests.Session()
r = s.get(base + "/blob/2000000/21")
r.raise_for_status()
sys.stdout.write("get=%d %s\n" % (len(r.content), hashlib.sha256(r.content).hexdigest()))
r = s.get(base + "/blob/2000000/21", headers={"Range": "bytes=100-199"})
sys.stdout.write("range=%d %d\n" % (r.status_code, len(r.content)))
r = s.put(base + "/up", data=bytes(range(256)) * 4096)
sys.stdout.write("put=%s\n" % r.text)
def gen():
    for _ in range(8):
        yield b"x" * 100000
r = s.put(base + "/up", data=gen())
sys.stdout.write("chunked=%s\n" % r.text)
r = s.get(base + "/echo?a=1&b=%2F", headers={"X-Amz-Date": "20240101T000000Z", "Authorization": "AWS4-HMAC-SHA256 sig"})
sys.stdout.write(r.text)
"#;
    let mut cmd = std::process::Command::new("python3");
    cmd.args(["-c", script, &route.url()])
        .env_remove("http_proxy")
        .env_remove("HTTP_PROXY");
    let out = run(cmd).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let want_get = {
        use std::fmt::Write;
        let data = blob(21, 0, 2_000_000);
        let digest = std::process::Command::new("python3")
            .args([
                "-c",
                "import sys,hashlib;print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())",
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write as _;
                c.stdin.take().unwrap().write_all(&data)?;
                c.wait_with_output()
            })
            .unwrap();
        let mut s = String::new();
        write!(
            s,
            "get=2000000 {}",
            String::from_utf8(digest.stdout).unwrap().trim()
        )
        .unwrap();
        s
    };
    assert!(text.contains(&want_get), "{text}");
    assert!(text.contains("range=206 100"), "{text}");
    let put_data: Vec<u8> = (0..4096).flat_map(|_| 0u8..=255).collect();
    assert!(
        text.contains(&format!(
            "put=len=1048576 blake3={}",
            blake3::hash(&put_data).to_hex()
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "chunked=len=800000 blake3={}",
            blake3::hash(&vec![b'x'; 800_000]).to_hex()
        )),
        "{text}"
    );
    // The request target and the signed headers arrive byte for byte; Host is the one the
    // client used (the route's address), as a SigV4 signature needs.
    assert!(text.contains("target=/echo?a=1&b=%2F\n"), "{text}");
    assert!(text.contains(&format!("host: {}\n", route.addr)), "{text}");
    assert!(text.contains("x-amz-date: 20240101T000000Z\n"), "{text}");
    assert!(
        text.contains("authorization: AWS4-HMAC-SHA256 sig\n"),
        "{text}"
    );
    // One keep-alive session → one upstream connection.
    assert_eq!(route.connects(), 1);
    let seen = route.connector.seen.lock().unwrap().clone();
    assert_eq!(
        seen[0].0,
        strait_http::Target::Service {
            service: "origin".into()
        }
    );
}

#[tokio::test]
async fn connect_upstream_https_verifies_against_the_ca_and_talks_tls() {
    let dir = tempfile::tempdir().unwrap();
    let pki = test_pki(dir.path());
    let addr = start_tls_server(&pki, true).await;
    let mut s = strait_http::connect_upstream(
        &format!("https://localhost:{}", addr.port()),
        Some(&pki.ca_pem),
    )
    .await
    .unwrap();
    s.write_all(b"ping through tls").await.unwrap();
    let mut buf = [0u8; 16];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping through tls");
}

#[tokio::test]
async fn connect_upstream_refuses_a_server_signed_by_another_ca() {
    let dir = tempfile::tempdir().unwrap();
    let server_pki = test_pki(dir.path());
    let other_pki = test_pki(dir.path());
    let addr = start_tls_server(&server_pki, true).await;
    let r = strait_http::connect_upstream(
        &format!("https://localhost:{}", addr.port()),
        Some(&other_pki.ca_pem),
    )
    .await;
    let err = r.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("TLS handshake"), "{err}");
    // And the Mozilla roots do not trust a test CA either.
    let r =
        strait_http::connect_upstream(&format!("https://localhost:{}", addr.port()), None).await;
    assert!(r.is_err());
    // Plain TCP forms still connect.
    let origin = start_origin().await;
    for form in [
        format!("tcp://{}", origin.addr),
        origin.addr.to_string(),
        format!("http://{}", origin.addr),
    ] {
        assert!(
            strait_http::connect_upstream(&form, None).await.is_ok(),
            "{form}"
        );
    }
}
