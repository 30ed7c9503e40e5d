//! Unmodified Python tools through the ingress with the direct connector: the AWS CLI against
//! moto's S3 server through `serve_route`, and `pip download` through `serve_proxy` against a
//! PEP 503 index served by `python3 -m http.server`. Each test skips, saying why, when its tool
//! is not installed (`pip install -r tests/requirements.txt`).
#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::*;

fn have(cmd: &str, arg: &str) -> bool {
    Command::new(cmd)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process killed when dropped (only the one this test started).
struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Wait until `addr` accepts connections (the server process is up), at most 30 s.
async fn wait_listening(addr: SocketAddr) {
    for _ in 0..600 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{addr} never started listening");
}

fn clean_env(c: &mut Command) -> &mut Command {
    for v in [
        "http_proxy",
        "https_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "no_proxy",
        "NO_PROXY",
        "ALL_PROXY",
    ] {
        c.env_remove(v);
    }
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_cli_multipart_copy_round_trips_on_moto_s3_with_sigv4_checked_through_route() {
    if !have("aws", "--version") || !have("moto_server", "--help") {
        eprintln!("SKIP: `aws` (awscli) or `moto_server` (moto[server]) not installed; pip install -r tests/requirements.txt");
        return;
    }
    let port = free_port();
    let moto_addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let _moto = Kill(
        Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_listening(moto_addr).await;
    let route = start_route(classifier(""), moto_addr).await;
    let dir = tempfile::tempdir().unwrap();
    // 20 MiB: above the CLI's 8 MiB multipart threshold, so this is a multipart upload.
    let size = 20 * 1024 * 1024;
    let src = dir.path().join("model.bin");
    std::fs::write(&src, blob(77, 0, size)).unwrap();
    let aws_with = |endpoint: String, key: String, secret: String, args: &[&str]| {
        let mut c = Command::new("aws");
        clean_env(&mut c)
            .args(["--endpoint-url", &endpoint])
            .args(args)
            .env("AWS_ACCESS_KEY_ID", key)
            .env("AWS_SECRET_ACCESS_KEY", secret)
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_CONFIG_FILE", "/dev/null")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null");
        c
    };
    let check = |out: std::process::Output| {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    // Make moto verify SigV4: after 3 unauthenticated IAM calls (user, policy, key, made
    // directly against moto), every request must be signed with the new key.
    let mut c = curl();
    c.args([
        "-X",
        "POST",
        "-H",
        "content-type: text/plain",
        "--data-binary",
        "3",
    ])
    .arg(format!("http://{moto_addr}/moto-api/reset-auth"));
    check(run(c).await);
    let direct = |args: &[&str]| {
        aws_with(
            format!("http://{moto_addr}"),
            "testing".into(),
            "testing".into(),
            args,
        )
    };
    check(run(direct(&["iam", "create-user", "--user-name", "pipeline"])).await);
    check(run(direct(&["iam", "put-user-policy", "--user-name", "pipeline", "--policy-name", "all",
        "--policy-document", r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}"#])).await);
    let keys = check(
        run(direct(&[
            "iam",
            "create-access-key",
            "--user-name",
            "pipeline",
            "--output",
            "text",
            "--query",
            "AccessKey.[AccessKeyId,SecretAccessKey]",
        ]))
        .await,
    );
    let mut keys = keys.split_whitespace().map(str::to_owned);
    let (key, secret) = (keys.next().unwrap(), keys.next().unwrap());
    let aws = |args: &[&str]| aws_with(route.url(), key.clone(), secret.clone(), args);
    // Through the route, a wrong secret is refused by moto: signatures are really checked.
    let out = run(aws_with(
        route.url(),
        key.clone(),
        "wrong".into(),
        &["s3", "mb", "s3://nope"],
    ))
    .await;
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("SignatureDoesNotMatch"),
        "{out:?}"
    );
    check(run(aws(&["s3", "mb", "s3://strait"])).await);
    check(
        run(aws(&[
            "s3",
            "cp",
            src.to_str().unwrap(),
            "s3://strait/models/model.bin",
        ]))
        .await,
    );
    // `s3 ls` (ListObjectsV2) is not used: moto 5.2 miscomputes its signature even without
    // strait in the path (SignatureDoesNotMatch when talking to moto directly).
    let head = check(
        run(aws(&[
            "s3api",
            "head-object",
            "--bucket",
            "strait",
            "--key",
            "models/model.bin",
            "--query",
            "ContentLength",
            "--output",
            "text",
        ]))
        .await,
    );
    assert_eq!(head.trim(), size.to_string());
    let back = dir.path().join("back.bin");
    check(
        run(aws(&[
            "s3",
            "cp",
            "s3://strait/models/model.bin",
            back.to_str().unwrap(),
        ]))
        .await,
    );
    assert!(std::fs::read(&back).unwrap() == blob(77, 0, size));
    let default = route
        .stats
        .classes
        .snapshot()
        .into_iter()
        .find(|s| s.class == "default")
        .unwrap();
    assert!(default.logical_bytes >= 2 * size as u64, "{default:?}");
}

/// A wheel pip accepts, built with the standard library (no `wheel`/`build` needed).
const MAKE_INDEX: &str = r#"
import base64, hashlib, os, sys, zipfile
root = sys.argv[1]
name, ver = "straitdemo", "1.0"
whl = f"{name}-{ver}-py3-none-any.whl"
files = {
    f"{name}/__init__.py": b"VALUE = 42\n",
    f"{name}/data.txt": b"strait " * 50000,
    f"{name}-{ver}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {ver}\n".encode(),
    f"{name}-{ver}.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: strait-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
}
record = ""
for p, b in files.items():
    d = base64.urlsafe_b64encode(hashlib.sha256(b).digest()).rstrip(b"=").decode()
    record += f"{p},sha256={d},{len(b)}\n"
record += f"{name}-{ver}.dist-info/RECORD,,\n"
files[f"{name}-{ver}.dist-info/RECORD"] = record.encode()
os.makedirs(f"{root}/simple/{name}", exist_ok=True)
with zipfile.ZipFile(f"{root}/{whl}", "w", zipfile.ZIP_DEFLATED) as z:
    for p, b in files.items():
        z.writestr(p, b)
h = hashlib.sha256(open(f"{root}/{whl}", "rb").read()).hexdigest()
open(f"{root}/simple/index.html", "w").write(f'<html><body><a href="{name}/">{name}</a></body></html>')
open(f"{root}/simple/{name}/index.html", "w").write(f'<html><body><a href="../../{whl}#sha256={h}">{whl}</a></body></html>')
print(whl)
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pip_download_through_http_proxy_fetches_the_wheel_intact() {
    if !have("python3", "-V") || !have("pip", "--version") {
        eprintln!("SKIP: python3/pip not installed");
        return;
    }
    let index = tempfile::tempdir().unwrap();
    let out = run({
        let mut c = Command::new("python3");
        c.args(["-c", MAKE_INDEX, index.path().to_str().unwrap()]);
        c
    })
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let whl = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let port = free_port();
    let http_addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let _http = Kill(
        Command::new("python3")
            .args([
                "-m",
                "http.server",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--directory",
            ])
            .arg(index.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_listening(http_addr).await;
    let proxy = start_proxy(classifier("")).await;
    let dest = tempfile::tempdir().unwrap();
    let mut c = Command::new("pip");
    clean_env(&mut c)
        .args([
            "download",
            "--no-cache-dir",
            "--no-deps",
            "--disable-pip-version-check",
        ])
        .args(["--index-url", &format!("http://{http_addr}/simple")])
        .args(["--trusted-host", "127.0.0.1", "-d"])
        .arg(dest.path())
        .arg("straitdemo")
        .env("HTTP_PROXY", proxy.url())
        .env("http_proxy", proxy.url());
    let out = run(c).await;
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read(dest.path().join(&whl)).unwrap(),
        std::fs::read(index.path().join(&whl)).unwrap()
    );
    // The index pages and the wheel all went through the proxy.
    let reqs: u64 = proxy
        .stats
        .classes
        .snapshot()
        .iter()
        .map(|s| s.requests)
        .sum();
    assert!(reqs >= 2, "{reqs}");
    assert!(proxy.connects() >= 1);
}
