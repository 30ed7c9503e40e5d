//! Issue 2: `strait check-config` names the dotted field of every problem; the example configs
//! pass; a broken config stops start-up with the same message.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;
use strait_e2e::bin::{light, strait_bin};
use strait_e2e::pair::certs;

fn workspace() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

/// Runs `strait ARGS` in `dir`; (exit code, stdout + stderr).
fn strait(dir: &Path, args: &[&str]) -> (i32, String) {
    let out = Command::new(strait_bin())
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The example configs with certificates generated next to them (their relative paths resolve
/// against the working directory, as in the README's quickstart).
fn examples() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    certs(&tmp.path().join("certs"), &[]).unwrap();
    std::fs::create_dir_all(tmp.path().join("configs")).unwrap();
    for f in ["core.toml", "edge.toml"] {
        std::fs::copy(
            workspace().join("configs").join(f),
            tmp.path().join("configs").join(f),
        )
        .unwrap();
    }
    tmp
}

#[test]
fn example_configs_pass_check_config() {
    let _l = light();
    let tmp = examples();
    let (code, out) = strait(
        tmp.path(),
        &["check-config", "configs/core.toml", "configs/edge.toml"],
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("configs/core.toml: ok"), "{out}");
    assert!(out.contains("configs/edge.toml: ok"), "{out}");
}

/// (what to replace in which example, replacement, dotted field expected in the output).
const BROKEN: &[(&str, &str, &str, &str)] = &[
    (
        "edge",
        "listen = \"127.0.0.1:9000\"",
        "listen = \"::99999\"",
        "edge.forward[0].listen",
    ),
    (
        "edge",
        "core = \"127.0.0.1:4433\"",
        "core = \"nowhere\"",
        "edge.core",
    ),
    (
        "edge",
        "reconnect_max = \"5s\"",
        "reconnect_max = \"10ms\"",
        "edge.reconnect_max",
    ),
    (
        "edge",
        "flow_wait = \"10s\"",
        "flow_wait = \"soon\"",
        "edge.flow_wait",
    ),
    (
        "edge",
        "service = \"origin\"",
        "service = \"bad name!\"",
        "edge.forward[0].service",
    ),
    (
        "edge",
        "compression = 3",
        "compression = 42",
        "edge.forward[0].compression",
    ),
    (
        "core",
        "upstream = \"127.0.0.1:8000\"",
        "upstream = \"127.0.0.1\"",
        "core.service[0].upstream",
    ),
    (
        "core",
        "listen = \"127.0.0.1:4433\"",
        "listen = \"localhost:4433\"",
        "core.listen",
    ),
    (
        "core",
        "upstream_connect_timeout = \"10s\"",
        "upstream_connect_timeout = \"-1s\"",
        "core.upstream_connect_timeout",
    ),
    (
        "core",
        "listen = \"127.0.0.1:9902\"",
        "listen = \"9902\"",
        "admin.listen",
    ),
    (
        "core",
        "drain_timeout = \"10s\"",
        "drain_timeout = \"forever\"",
        "shutdown.drain_timeout",
    ),
    (
        "core",
        "congestion = \"bbr\"",
        "congestion = \"vegas\"",
        "tunnel.congestion",
    ),
    (
        "core",
        "keep_alive = \"2s\"",
        "keep_alive = \"60s\"",
        "tunnel.keep_alive",
    ),
    (
        "core",
        "initial_mtu = 1452",
        "initial_mtu = 100",
        "tunnel.initial_mtu",
    ),
    ("core", "fec = \"off\"", "fec = \"always\"", "tunnel.fec"),
    (
        "core",
        "stream_receive_window = \"32MiB\"",
        "stream_receive_window = \"lots\"",
        "tunnel.stream_receive_window",
    ),
    (
        "core",
        "avg_chunk = \"64KiB\"",
        "avg_chunk = \"60KiB\"",
        "dedup.avg_chunk",
    ),
    (
        "core",
        "flow_window = \"16MiB\"",
        "flow_window = \"512KiB\"",
        "dedup.flow_window",
    ),
    (
        "core",
        "max_bytes = \"4GiB\"",
        "max_bytes = \"1KiB\"",
        "store.max_bytes",
    ),
    (
        "core",
        "flow_budget = \"128MiB\"",
        "flow_budget = \"lots\"",
        "limits.flow_budget",
    ),
    (
        "core",
        "edge_flow_budget = \"64MiB\"",
        "edge_flow_budget = \"huge\"",
        "limits.edge_flow_budget",
    ),
    (
        "core",
        "max_connections_per_edge = 4",
        "max_connections_per_edge = 0",
        "limits.max_connections_per_edge",
    ),
    (
        "core",
        "max_flows_per_edge = 1024",
        "max_flows_per_edge = 0",
        "limits.max_flows_per_edge",
    ),
    (
        "core",
        "open_timeout = \"10s\"",
        "open_timeout = \"soon\"",
        "limits.open_timeout",
    ),
    (
        "edge",
        "flow_idle_timeout = \"1h\"",
        "flow_idle_timeout = \"never\"",
        "limits.flow_idle_timeout",
    ),
    (
        "edge",
        "tcp_keepalive = \"60s\"",
        "tcp_keepalive = \"yes\"",
        "limits.tcp_keepalive",
    ),
    (
        "edge",
        "max_admin_connections = 64",
        "max_admin_connections = 99999",
        "limits.max_admin_connections",
    ),
    (
        "edge",
        "header_read_timeout = \"10s\"",
        "header_read_timeout = \"slow\"",
        "limits.header_read_timeout",
    ),
    ("core", "level = \"info\"", "level = \"loud\"", "log.level"),
    (
        "core",
        "ca = \"certs/ca.pem\"",
        "ca = \"certs/missing.pem\"",
        "tls.ca",
    ),
    (
        "core",
        "key_file = \"certs/dedup.key\"",
        "key_file = \"certs/nokey\"",
        "dedup.key_file",
    ),
];

#[test]
fn every_config_validation_error_names_its_field() {
    let _l = light();
    let tmp = examples();
    let mut failures = Vec::new();
    for (i, (role, from, to, field)) in BROKEN.iter().enumerate() {
        let text = std::fs::read_to_string(tmp.path().join("configs").join(format!("{role}.toml")))
            .unwrap();
        assert!(
            text.contains(from),
            "example {role}.toml no longer contains {from:?}"
        );
        let broken = text.replacen(from, to, 1);
        let name = format!("broken-{i}.toml");
        std::fs::write(tmp.path().join(&name), broken).unwrap();
        let (code, out) = strait(tmp.path(), &["check-config", &name]);
        let mut value = to
            .split_once('=')
            .map(|x| x.1.trim().trim_matches('"'))
            .unwrap_or("");
        // Cross-field checks report the parsed value in bytes.
        if *field == "dedup.avg_chunk" {
            value = "61440";
        }
        if code != 1 || !out.contains(field) || !out.contains(value) {
            failures.push(format!("{field} ({to}): exit {code}, output: {out}"));
        }
    }
    assert!(
        failures.is_empty(),
        "problems not named:\n{}",
        failures.join("\n")
    );
}

#[test]
fn check_config_lists_every_problem_and_start_up_refuses_the_config() {
    let _l = light();
    let tmp = examples();
    let text = std::fs::read_to_string(tmp.path().join("configs/edge.toml"))
        .unwrap()
        .replacen(
            "listen = \"127.0.0.1:9000\"",
            "listen = \"127.0.0.1:99999\"",
            1,
        )
        .replacen("congestion = \"bbr\"", "congestion = \"fast\"", 1)
        .replacen("max_chunk = \"256KiB\"", "max_chunk = \"1KiB\"", 1);
    std::fs::write(tmp.path().join("bad.toml"), &text).unwrap();
    let (code, out) = strait(tmp.path(), &["check-config", "bad.toml"]);
    assert_eq!(code, 1, "{out}");
    for f in [
        "edge.forward[0].listen",
        "tunnel.congestion",
        "dedup.max_chunk",
    ] {
        assert!(out.contains(f), "{f} missing from: {out}");
    }
    // An unknown key is reported by name too.
    std::fs::write(
        tmp.path().join("typo.toml"),
        text.replacen("[edge]\n", "[edge]\ncroe = \"x:1\"\n", 1),
    )
    .unwrap();
    let (code, out) = strait(tmp.path(), &["check-config", "typo.toml"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("croe"), "unknown key not named: {out}");
    // Start-up stops with the same message instead of running with a fallback.
    let (code, out) = strait(tmp.path(), &["edge", "--config", "bad.toml"]);
    assert_ne!(code, 0, "edge started with an invalid config: {out}");
    assert!(
        out.contains("tunnel.congestion") && out.contains("fast"),
        "{out}"
    );
}
