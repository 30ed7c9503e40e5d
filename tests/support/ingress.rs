//! HTTP ingress pairs: an edge with `kind = "http"` routes, TCP forwards and `[[edge.proxy]]`
//! listeners, a core with `http://`/`https://`/host:port services, `proxy_allow` and
//! `upstream_ca`, policy sections on both; plus the external HTTP servers and tools the ingress
//! tests drive (a Python object server with Range and chunked PUT, optionally over TLS).
//!
//! The configs reuse [`crate::pair::Common`] (certificates, store, tunnel timings) and append
//! the ingress sections; ports are 0 and read back from the logs (`forward listening
//! forward=NAME listen=ADDR` is logged for proxies too). Either process can be started inside a
//! network namespace (`ip netns exec NS strait ...`) for the WAN-emulated tests.

use crate::admin;
use crate::bin::strait_bin;
use crate::pair::{addr_after, certs, Common, CoreCfg, EdgeCfg, TlsFiles, START_TIMEOUT};
use crate::proc::Proc;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

/// One edge listener.
#[derive(Debug, Clone)]
pub enum Listener {
    /// `[[edge.forward]] kind = "http"` → core service.
    Route {
        /// Route name.
        name: String,
        /// Core service.
        service: String,
    },
    /// `[[edge.forward]] kind = "tcp"` → core service.
    Tcp {
        /// Route name.
        name: String,
        /// Core service.
        service: String,
    },
    /// `[[edge.proxy]]`.
    Proxy {
        /// Proxy name (its route name in the statistics).
        name: String,
    },
}

impl Listener {
    /// The route name.
    pub fn name(&self) -> &str {
        match self {
            Listener::Route { name, .. }
            | Listener::Tcp { name, .. }
            | Listener::Proxy { name } => name,
        }
    }

    fn toml(&self, listen: &str) -> String {
        match self {
            Listener::Route { name, service } => format!(
                "\n[[edge.forward]]\nkind = \"http\"\nname = \"{name}\"\nlisten = \"{listen}\"\nservice = \"{service}\"\n"
            ),
            Listener::Tcp { name, service } => format!(
                "\n[[edge.forward]]\nkind = \"tcp\"\nname = \"{name}\"\nlisten = \"{listen}\"\nservice = \"{service}\"\n"
            ),
            Listener::Proxy { name } => {
                format!("\n[[edge.proxy]]\nname = \"{name}\"\nlisten = \"{listen}\"\n")
            }
        }
    }
}

/// Where a process runs.
#[derive(Debug, Clone, Default)]
pub enum Place {
    /// The test's own network namespace.
    #[default]
    Here,
    /// `ip netns exec NAME`.
    Netns(String),
}

impl Place {
    fn command(&self) -> Command {
        match self {
            Place::Here => Command::new(strait_bin()),
            Place::Netns(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(strait_bin());
                c
            }
        }
    }
}

/// Settings of an ingress pair.
#[derive(Debug, Clone)]
pub struct IngressCfg {
    /// Core services: (name, upstream as written: `http://…`, `https://…` or host:port).
    pub services: Vec<(String, String)>,
    /// `core.proxy_allow`.
    pub proxy_allow: Vec<String>,
    /// `core.upstream_ca`.
    pub upstream_ca: Option<PathBuf>,
    /// Edge listeners.
    pub listeners: Vec<Listener>,
    /// Policy sections appended to the core's config.
    pub core_policy: String,
    /// Policy sections appended to the edge's config.
    pub edge_policy: String,
    /// Address the core's tunnel listens on (`127.0.0.1:0`, or a WAN address).
    pub core_listen: String,
    /// Where the core runs.
    pub core_place: Place,
    /// Where the edge runs.
    pub edge_place: Place,
    /// Extra lines for `[dedup]` of both sides.
    pub dedup_extra: String,
}

impl Default for IngressCfg {
    fn default() -> Self {
        IngressCfg {
            services: Vec::new(),
            proxy_allow: Vec::new(),
            upstream_ca: None,
            listeners: Vec::new(),
            core_policy: String::new(),
            edge_policy: String::new(),
            core_listen: "127.0.0.1:0".into(),
            core_place: Place::Here,
            dedup_extra: String::new(),
            edge_place: Place::Here,
        }
    }
}

/// A running ingress pair. Field order is drop order: processes die before the directory goes.
pub struct IngressPair {
    /// The edge process.
    pub edge: Proc,
    /// The core process.
    pub core: Proc,
    /// Edge admin address (in the edge's namespace).
    pub edge_admin: SocketAddr,
    /// Core admin address (in the core's namespace).
    pub core_admin: SocketAddr,
    /// Listener addresses by route name.
    pub listeners: Vec<(String, SocketAddr)>,
    /// Certificates: `ca.pem`, `core-localhost.{pem,key}` (DNS name `localhost`), ...
    pub certs: PathBuf,
    /// Everything lives here.
    pub dir: tempfile::TempDir,
}

fn common(dir: &Path, certs: &Path, role: &str, cert: &str) -> Common {
    Common {
        admin: "127.0.0.1:0".into(),
        tls: TlsFiles {
            ca: certs.join("ca.pem"),
            cert: certs.join(format!("{cert}.pem")),
            key: certs.join(format!("{cert}.key")),
        },
        key_file: certs.join("dedup.key"),
        store_path: dir.join(format!("{role}-store")),
        store_max: "2GiB".into(),
        drain_timeout: "5s".into(),
        keep_alive: "500ms".into(),
        idle_timeout: "5s".into(),
        flush_delay: "2ms".into(),
        tunnel_extra: String::new(),
        dedup_extra: String::new(),
    }
}

fn quoted_list(v: &[String]) -> String {
    let items: Vec<String> = v.iter().map(|s| format!("\"{s}\"")).collect();
    format!("[{}]", items.join(", "))
}

impl IngressPair {
    /// Writes certificates and configs, starts the core, then the edge, and waits until the
    /// edge reports the tunnel up.
    pub fn start(cfg: &IngressCfg) -> anyhow::Result<IngressPair> {
        let dir = tempfile::Builder::new()
            .prefix("strait-e2e-http-")
            .tempdir()?;
        let certs_dir = dir.path().join("certs");
        certs(&certs_dir, &[])?;
        let mut core_common = common(dir.path(), &certs_dir, "core", "core-localhost");
        core_common.dedup_extra = cfg.dedup_extra.clone();
        let mut core_toml = CoreCfg {
            common: core_common,
            listen: cfg.core_listen.clone(),
            services: Vec::new(),
        }
        .toml();
        // `CoreCfg::toml` ends inside `[core]`: the ingress keys go there, then the services.
        core_toml.push_str(&format!(
            "proxy_allow = {}\n",
            quoted_list(&cfg.proxy_allow)
        ));
        if let Some(ca) = &cfg.upstream_ca {
            core_toml.push_str(&format!("upstream_ca = \"{}\"\n", ca.display()));
        }
        for (name, upstream) in &cfg.services {
            core_toml.push_str(&format!(
                "\n[[core.service]]\nname = \"{name}\"\nupstream = \"{upstream}\"\n"
            ));
        }
        core_toml.push('\n');
        core_toml.push_str(&cfg.core_policy);
        let core_path = dir.path().join("core.toml");
        std::fs::write(&core_path, &core_toml)?;
        let mut c = cfg.core_place.command();
        c.arg("core").arg("--config").arg(&core_path).env(
            "RUST_LOG",
            std::env::var("STRAIT_TEST_LOG").unwrap_or_else(|_| "info".into()),
        );
        let mut core = Proc::spawn("core", c)?;
        let l = core.wait_log(&["core listening"], START_TIMEOUT)?;
        let tunnel = addr_after(&l, "listen=")?;
        let l = core.wait_log(&["admin server listening"], START_TIMEOUT)?;
        let core_admin = addr_after(&l, "admin=")?;

        let mut edge_common = common(dir.path(), &certs_dir, "edge", "edge-edge-a");
        edge_common.dedup_extra = cfg.dedup_extra.clone();
        let mut edge_toml = EdgeCfg {
            common: edge_common,
            core: tunnel.to_string(),
            server_name: "localhost".into(),
            flow_wait: "10s".into(),
            reconnect_max: "500ms".into(),
            forwards: Vec::new(),
        }
        .toml();
        for l in &cfg.listeners {
            edge_toml.push_str(&l.toml("127.0.0.1:0"));
        }
        edge_toml.push('\n');
        edge_toml.push_str(&cfg.edge_policy);
        let edge_path = dir.path().join("edge.toml");
        std::fs::write(&edge_path, &edge_toml)?;
        let mut c = cfg.edge_place.command();
        c.arg("edge").arg("--config").arg(&edge_path).env(
            "RUST_LOG",
            std::env::var("STRAIT_TEST_LOG").unwrap_or_else(|_| "info".into()),
        );
        let mut edge = Proc::spawn("edge", c)?;
        let l = edge.wait_log(&["admin server listening"], START_TIMEOUT)?;
        let edge_admin = addr_after(&l, "admin=")?;
        let mut listeners = Vec::new();
        for l in &cfg.listeners {
            let needle = format!("forward={} listen=", l.name());
            let line = edge.wait_log(&["forward listening", &needle], START_TIMEOUT)?;
            listeners.push((l.name().to_string(), addr_after(&line, "listen=")?));
        }
        Ok(IngressPair {
            edge,
            core,
            edge_admin,
            core_admin,
            listeners,
            certs: certs_dir,
            dir,
        })
    }

    /// Waits until the edge's `/ready` answers 200, probing with `probe` (which may enter the
    /// edge's namespace); fails early if either process exits.
    pub fn wait_ready_with(
        &mut self,
        timeout: Duration,
        probe: impl Fn(SocketAddr) -> bool,
    ) -> anyhow::Result<()> {
        wait_pair_ready(
            &mut self.edge,
            &mut self.core,
            self.edge_admin,
            timeout,
            probe,
        )
    }

    /// Waits until the edge (in this namespace) is ready.
    pub fn wait_ready(&mut self) -> anyhow::Result<()> {
        self.wait_ready_with(crate::pair::READY_TIMEOUT, admin::ready)
    }

    /// The listener named `name`.
    pub fn addr(&self, name: &str) -> SocketAddr {
        self.listeners
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| *a)
            .unwrap_or_else(|| panic!("no listener {name:?} in {:?}", self.listeners))
    }

    /// `http://ADDR` of listener `name`.
    pub fn url(&self, name: &str) -> String {
        format!("http://{}", self.addr(name))
    }

    /// The edge's `/stats`.
    pub fn edge_stats(&self) -> serde_json::Value {
        admin::stats(self.edge_admin).expect("edge /stats")
    }

    /// The core's `/stats`.
    pub fn core_stats(&self) -> serde_json::Value {
        admin::stats(self.core_admin).expect("core /stats")
    }

    /// The edge's `/metrics`.
    pub fn edge_metrics(&self) -> String {
        admin::metrics(self.edge_admin).expect("edge /metrics")
    }

    /// The core's `/metrics`.
    pub fn core_metrics(&self) -> String {
        admin::metrics(self.core_admin).expect("core /metrics")
    }

    /// SIGTERM to edge then core; both must exit 0.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        for p in [&mut self.edge, &mut self.core] {
            let st = p.terminate(Duration::from_secs(20))?;
            anyhow::ensure!(st.success(), "exited {st}:\n{}", p.tail(30));
        }
        Ok(())
    }
}

/// A child process killed (and reaped) when dropped; only ever the one this test started.
pub struct Kill(pub Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Whether `cmd arg` runs and exits 0.
pub fn have(cmd: &str, arg: &str) -> bool {
    Command::new(cmd)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Whether the Python modules of `tests/requirements.txt` are importable and the AWS CLI and
/// moto server are on PATH; if not, tries `pip install -r tests/requirements.txt` once. `None`
/// when ready, else why not (the caller skips with that reason).
pub fn python_tools() -> Option<String> {
    static READY: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    READY
        .get_or_init(|| {
            let ok = || {
                have("aws", "--version")
                    && have("moto_server", "--help")
                    && Command::new("python3")
                        .args(["-c", "import requests"])
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status()
                        .map(|s| s.success())
                        .unwrap_or(false)
            };
            if !have("python3", "-V") {
                return Some("python3 is not installed".into());
            }
            if ok() {
                return None;
            }
            let req = Path::new(env!("CARGO_MANIFEST_DIR")).join("requirements.txt");
            let out = Command::new("python3")
                .args(["-m", "pip", "install", "-q", "-r"])
                .arg(&req)
                .output();
            if ok() {
                return None;
            }
            Some(format!(
                "the Python tools of {} are missing and `pip install -r` failed: {:?}",
                req.display(),
                out.map(|o| String::from_utf8_lossy(&o.stderr).to_string())
            ))
        })
        .clone()
}

/// Removes every proxy variable, so a tool only uses a proxy the test sets.
pub fn clean_env(c: &mut Command) -> &mut Command {
    for v in [
        "http_proxy",
        "https_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "no_proxy",
        "NO_PROXY",
        "ALL_PROXY",
        "all_proxy",
    ] {
        c.env_remove(v);
    }
    c
}

/// A free TCP port on 127.0.0.1 (for servers that cannot report an ephemeral one).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
}

/// Polls until `addr` accepts TCP connections (a server process came up), or fails.
pub fn wait_listening(addr: SocketAddr, child: &mut Child) -> anyhow::Result<()> {
    crate::poll(
        &format!("{addr} listening"),
        Duration::from_secs(30),
        || {
            if let Ok(Some(st)) = child.try_wait() {
                panic!("server for {addr} exited early: {st}");
            }
            std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200))
                .ok()
                .map(|_| ())
        },
    )
}

/// Runs `c`, capturing its output, failing if it cannot be spawned.
pub fn output(mut c: Command) -> Output {
    c.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {c:?}: {e}"))
}

/// `c`'s stdout, asserting that it exited 0.
pub fn check(c: Command) -> Vec<u8> {
    let desc = format!("{c:?}");
    let out = output(c);
    assert!(
        out.status.success(),
        "{desc} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A Python object server: GET serves files under the root (with single `Range: bytes=a-b`),
/// PUT/POST store the body (Content-Length or chunked; `Expect: 100-continue` honoured) and
/// answer the SHA-256 hex of what arrived; `GET /_conns` answers how many TCP connections it
/// accepted (so tests see keep-alive reuse). HTTP/1.1 keep-alive; `--tls CERT KEY` serves HTTPS.
pub const OBJECT_SERVER: &str = r#"
import hashlib, os, re, ssl, sys, threading
from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler
root, port = sys.argv[1], int(sys.argv[2])
conns = [0]
lock = threading.Lock()
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def setup(self):
        super().setup()
        with lock: conns[0] += 1
    def file(self):
        p = self.path.split("?")[0].lstrip("/")
        if ".." in p or not p: return None
        return os.path.join(root, p)
    def reply(self, code, body, extra=()):
        self.send_response(code)
        for k, v in extra: self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_GET(self):
        if self.path == "/_conns":
            return self.reply(200, str(conns[0]).encode())
        f = self.file()
        if f is None or not os.path.isfile(f):
            return self.reply(404, b"not found")
        data = open(f, "rb").read()
        m = re.match(r"bytes=(\d+)-(\d*)$", self.headers.get("Range") or "")
        if m:
            a = int(m.group(1)); b = int(m.group(2)) if m.group(2) else len(data) - 1
            b = min(b, len(data) - 1)
            return self.reply(206, data[a:b + 1], [("Content-Range", f"bytes {a}-{b}/{len(data)}")])
        self.reply(200, data)
    def do_PUT(self):
        f = self.file()
        buf = bytearray()
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            while True:
                n = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if n == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""): pass
                    break
                buf += self.rfile.read(n)
                self.rfile.readline()
        else:
            buf = self.rfile.read(int(self.headers.get("Content-Length") or "0"))
        if f is not None:
            os.makedirs(os.path.dirname(f), exist_ok=True)
            open(f, "wb").write(buf)
        self.reply(201, hashlib.sha256(buf).hexdigest().encode())
    do_POST = do_PUT
srv = ThreadingHTTPServer(("127.0.0.1", port), H)
srv.daemon_threads = True
if len(sys.argv) > 3 and sys.argv[3] == "--tls":
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(sys.argv[4], sys.argv[5])
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
srv.serve_forever()
"#;

/// A running [`OBJECT_SERVER`].
pub struct ObjectServer {
    /// Where it listens (127.0.0.1).
    pub addr: SocketAddr,
    /// Its root directory (files the test puts here are served).
    pub root: tempfile::TempDir,
    _child: Kill,
}

impl ObjectServer {
    /// Starts a plain-HTTP object server, or HTTPS with `tls = Some((cert, key))`.
    pub fn start(tls: Option<(&Path, &Path)>) -> anyhow::Result<ObjectServer> {
        let root = tempfile::Builder::new()
            .prefix("strait-objects-")
            .tempdir()?;
        let port = free_port();
        let mut c = Command::new("python3");
        c.args(["-c", OBJECT_SERVER])
            .arg(root.path())
            .arg(port.to_string());
        if let Some((cert, key)) = tls {
            c.arg("--tls").arg(cert).arg(key);
        }
        let mut child = c
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()?;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        wait_listening(addr, &mut child)?;
        Ok(ObjectServer {
            addr,
            root,
            _child: Kill(child),
        })
    }

    /// Writes `data` as object `name` (served at `/name`).
    pub fn put_file(&self, name: &str, data: &[u8]) -> anyhow::Result<()> {
        let p = self.root.path().join(name);
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d)?;
        }
        std::fs::write(p, data)?;
        Ok(())
    }

    /// TCP connections the server has accepted (asked directly, not through strait; this
    /// request's own connection is included).
    pub fn connections(&self) -> anyhow::Result<u64> {
        let (st, body) = admin::get(self.addr, "/_conns")?;
        anyhow::ensure!(st == 200, "/_conns answered {st}");
        Ok(body.trim().parse()?)
    }
}

/// SHA-256 hex of `data` (what the object server answers for a PUT), via Python's hashlib so
/// the tests need no SHA-2 crate.
pub fn sha256_hex(path: &Path) -> String {
    let out = check({
        let mut c = Command::new("python3");
        c.args([
            "-c",
            "import hashlib,sys;print(hashlib.sha256(open(sys.argv[1],'rb').read()).hexdigest())",
        ])
        .arg(path);
        c
    });
    String::from_utf8_lossy(&out).trim().to_string()
}

/// Waits until `probe(edge_admin)` holds (the edge's `/ready`, probed wherever `probe` enters),
/// failing early if `edge` or `core` exits and after `timeout` with both logs' tails.
pub fn wait_pair_ready(
    edge: &mut Proc,
    core: &mut Proc,
    edge_admin: SocketAddr,
    timeout: Duration,
    probe: impl Fn(SocketAddr) -> bool,
) -> anyhow::Result<()> {
    let t0 = std::time::Instant::now();
    loop {
        if probe(edge_admin) {
            return Ok(());
        }
        if let Some(st) = edge.try_wait()? {
            anyhow::bail!("edge exited ({st}) before ready:\n{}", edge.tail(40));
        }
        if let Some(st) = core.try_wait()? {
            anyhow::bail!("core exited ({st}) before ready:\n{}", core.tail(40));
        }
        if t0.elapsed() > timeout {
            anyhow::bail!(
                "edge not ready within {timeout:?}; edge log:\n{}\ncore log:\n{}",
                edge.tail(30),
                core.tail(30)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
