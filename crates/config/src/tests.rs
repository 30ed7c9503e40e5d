#![allow(clippy::unwrap_used)]
use super::*;

const CORE: &str = include_str!("../../../configs/core.toml");
const EDGE: &str = include_str!("../../../configs/edge.toml");

fn problems(text: &str) -> Vec<Problem> {
    match parse(text, Path::new("test.toml"), false) {
        Err(Error::Invalid { problems, .. }) => problems,
        Err(e) => panic!("expected validation problems, got {e}"),
        Ok(_) => panic!("expected validation problems, config was accepted"),
    }
}

#[test]
fn example_configs_parse_with_documented_addresses() {
    let core = parse(CORE, Path::new("core.toml"), false).unwrap();
    let c = core.core.as_ref().unwrap();
    assert_eq!(c.listen.to_string(), "127.0.0.1:4433");
    assert_eq!(core.admin_listen.to_string(), "127.0.0.1:9902");
    assert_eq!(c.services[0].name, "origin");
    assert_eq!(c.services[0].upstream, "127.0.0.1:8000");
    let edge = parse(EDGE, Path::new("edge.toml"), false).unwrap();
    let e = edge.edge.as_ref().unwrap();
    assert_eq!(e.forwards[0].listen.to_string(), "127.0.0.1:9000");
    assert_eq!(e.forwards[0].service, "origin");
    assert_eq!(edge.admin_listen.to_string(), "127.0.0.1:9901");
    assert_eq!(edge.role(), Role::Edge);
}

#[test]
fn bad_listen_address_names_field_and_value() {
    let text = EDGE.replace("listen = \"127.0.0.1:9000\"", "listen = \"::99999\"");
    let p = problems(&text);
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(
        p[0].to_string(),
        "edge.forward[0].listen = \"::99999\": invalid socket address (expected ip:port, e.g. \"127.0.0.1:9000\")"
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    let text = CORE
        .replace("upstream = \"127.0.0.1:8000\"", "upstream = \"nowhere\"")
        .replace("congestion = \"bbr\"", "congestion = \"vegas\"")
        .replace("max_bytes = \"4GiB\"", "max_bytes = \"lots\"")
        .replace("initial_rtt = \"100ms\"", "initial_rtt = \"100\"");
    let p = problems(&text);
    let paths: Vec<&str> = p.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(
        paths,
        vec![
            "tunnel.congestion",
            "tunnel.initial_rtt",
            "store.max_bytes",
            "core.service[0].upstream"
        ]
    );
    for pr in &p {
        assert!(!pr.value.is_empty(), "problem without value: {pr}");
    }
}

#[test]
fn unknown_keys_are_rejected_with_their_name() {
    let text = EDGE.replace("[edge]", "[edge]\nfrobnicate = 1");
    let err = parse(&text, Path::new("edge.toml"), false).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("frobnicate"), "{msg}");
}

#[test]
fn duplicate_service_names_are_rejected() {
    let text =
        format!("{CORE}\n[[core.service]]\nname = \"origin\"\nupstream = \"127.0.0.1:8001\"\n");
    let p = problems(&text);
    assert_eq!(p[0].path, "core.service[1].name");
    assert!(p[0].reason.contains("duplicate"));
}

#[test]
fn fec_settings_parse_and_reject_nonsense() {
    let t = CORE.replace("fec = \"off\"", "fec = { data = 32, repair = 4 }");
    let c = parse(&t, Path::new("c"), false).unwrap();
    assert_eq!(
        c.tunnel.fec,
        Fec::Fixed {
            data: 32,
            repair: 4
        }
    );
    let t = CORE.replace("fec = \"off\"", "fec = \"sometimes\"");
    assert_eq!(problems(&t)[0].path, "tunnel.fec");
    // Adaptive: the word, or its knobs (either may be left at its default).
    for (setting, target, max_ratio) in [
        ("\"adaptive\"", DEFAULT_FEC_TARGET, DEFAULT_FEC_MAX_RATIO),
        ("{ target = 1e-6, max_ratio = 0.25 }", 1e-6, 0.25),
        ("{ max_ratio = 1 }", DEFAULT_FEC_TARGET, 1.0),
    ] {
        let t = CORE.replace("fec = \"off\"", &format!("fec = {setting}"));
        let c = parse(&t, Path::new("c"), false).unwrap();
        assert_eq!(
            c.tunnel.fec,
            Fec::Adaptive { target, max_ratio },
            "{setting}"
        );
    }
    // Out of range, named with the dotted path and the value.
    for (bad, path, value) in [
        ("{ target = 0 }", "tunnel.fec.target", "0"),
        ("{ target = 1.5 }", "tunnel.fec.target", "1.5"),
        ("{ max_ratio = -0.1 }", "tunnel.fec.max_ratio", "-0.1"),
        ("{ target = \"low\" }", "tunnel.fec.target", "\"low\""),
    ] {
        let t = CORE.replace("fec = \"off\"", &format!("fec = {bad}"));
        let p = problems(&t);
        assert_eq!(p.len(), 1, "{bad}: {p:?}");
        assert_eq!(
            (p[0].path.as_str(), p[0].value.as_str()),
            (path, value),
            "{bad}"
        );
    }
    // Fixed and adaptive knobs do not mix; unknown keys are refused.
    for bad in [
        "{ data = 32, repair = 4, target = 1e-4 }",
        "{ data = 32 }",
        "{ target = 1e-4, ratio = 0.5 }",
    ] {
        let t = CORE.replace("fec = \"off\"", &format!("fec = {bad}"));
        let p = problems(&t);
        assert_eq!(p.len(), 1, "{bad}: {p:?}");
        assert_eq!(p[0].path, "tunnel.fec", "{bad}");
    }
}

#[test]
fn key_material_is_never_echoed() {
    let t = CORE.replace("key_file = \"certs/dedup.key\"", "key = \"00112233\"");
    let p = problems(&t);
    assert_eq!(p[0].path, "dedup.key");
    assert_eq!(p[0].value, "<redacted>");
}

#[test]
fn compression_accepts_level_or_false() {
    let t = CORE.replace("compression = 3", "compression = false");
    let c = parse(&t, Path::new("c"), false).unwrap();
    assert_eq!(c.core.unwrap().services[0].policy.compression, None);
    let t = CORE.replace("compression = 3", "compression = 42");
    assert_eq!(problems(&t)[0].path, "core.service[0].compression");
}

#[test]
fn missing_files_are_reported_when_checked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("core.toml");
    let t = CORE.replace("certs/", &format!("{}/nope/", dir.path().display()));
    std::fs::write(&path, t).unwrap();
    let err = load(&path, true).unwrap_err();
    let Error::Invalid { problems, .. } = err else {
        panic!("expected problems")
    };
    let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(
        paths,
        vec!["tls.ca", "tls.cert", "tls.key", "dedup.key_file"]
    );
}

#[test]
fn config_with_both_roles_is_rejected() {
    let t = format!("{CORE}\n[edge]\ncore = \"127.0.0.1:4433\"\n[[edge.forward]]\nlisten = \"127.0.0.1:1\"\nservice = \"x\"\n");
    assert!(problems(&t).iter().any(|p| p.reason.contains("one role")));
}

#[test]
fn policy_errors_name_their_field() {
    let t = format!("{EDGE}\n[[rule]]\nclass = \"nonexistent\"\nhost = \"*.example.com\"\n");
    let p = problems(&t);
    assert_eq!(p.len(), 1, "{p:?}");
    // The example config already has one rule; the broken one is the second.
    assert_eq!(p[0].path, "rule[1].class");
    assert_eq!(p[0].value, "nonexistent");
}

#[test]
fn http_forwards_and_proxies_parse() {
    let t = EDGE.replace("kind = \"tcp\"", "kind = \"http\"")
        + "\n[[edge.proxy]]\nname = \"proxy2\"\nlisten = \"127.0.0.1:3129\"\n";
    let c = parse(&t, Path::new("e"), false).unwrap();
    let e = c.edge.unwrap();
    assert_eq!(e.forwards[0].kind, ForwardKind::Http);
    assert_eq!(e.proxies[0].listen.to_string(), "127.0.0.1:3128");
    assert_eq!(e.proxies[1].listen.to_string(), "127.0.0.1:3129");
    assert_eq!(e.proxies[1].listen.to_string(), "127.0.0.1:3129");
    let bad = EDGE.replace("kind = \"tcp\"", "kind = \"ftp\"");
    assert_eq!(problems(&bad)[0].path, "edge.forward[0].kind");
}

#[test]
fn limits_default_to_their_named_constants_and_parse_off() {
    let c = parse(CORE, Path::new("c"), false).unwrap();
    assert_eq!(c.limits, Limits::default());
    assert_eq!(c.limits.flow_budget, limits::DEFAULT_FLOW_BUDGET);
    assert_eq!(
        c.limits.flow_idle_timeout,
        Some(limits::DEFAULT_FLOW_IDLE_TIMEOUT)
    );
    let e = parse(EDGE, Path::new("e"), false).unwrap();
    assert_eq!(e.limits, Limits::default());
    // Without a [limits] section at all, the defaults apply too.
    let start = CORE.find("\n[limits]").unwrap();
    let end = CORE.find("\n[store]").unwrap();
    let bare = format!("{}{}", &CORE[..start], &CORE[end..]);
    assert_eq!(
        parse(&bare, Path::new("c"), false).unwrap().limits,
        Limits::default()
    );
    let t = CORE
        .replace("flow_idle_timeout = \"1h\"", "flow_idle_timeout = \"off\"")
        .replace("tcp_keepalive = \"60s\"", "tcp_keepalive = \"off\"")
        .replace("open_timeout = \"10s\"", "open_timeout = \"250ms\"")
        .replace(
            "max_connections_per_edge = 4",
            "max_connections_per_edge = 1",
        );
    let l = parse(&t, Path::new("c"), false).unwrap().limits;
    assert_eq!(l.flow_idle_timeout, None);
    assert_eq!(l.tcp_keepalive, None);
    assert_eq!(l.open_timeout, Duration::from_millis(250));
    assert_eq!(l.max_connections_per_edge, 1);
}

#[test]
fn bad_limits_name_their_dotted_path_and_value() {
    for (from, to, path, value) in [
        (
            "flow_budget = \"128MiB\"",
            "flow_budget = \"lots\"",
            "limits.flow_budget",
            "lots",
        ),
        (
            "flow_budget = \"128MiB\"",
            "flow_budget = \"8MiB\"",
            "limits.flow_budget",
            "8388608",
        ),
        (
            "edge_flow_budget = \"64MiB\"",
            "edge_flow_budget = \"256MiB\"",
            "limits.edge_flow_budget",
            "268435456",
        ),
        (
            "max_connections_per_edge = 4",
            "max_connections_per_edge = 0",
            "limits.max_connections_per_edge",
            "0",
        ),
        (
            "max_flows_per_edge = 1024",
            "max_flows_per_edge = -5",
            "limits.max_flows_per_edge",
            "-5",
        ),
        (
            "open_timeout = \"10s\"",
            "open_timeout = \"never\"",
            "limits.open_timeout",
            "never",
        ),
        (
            "flow_idle_timeout = \"1h\"",
            "flow_idle_timeout = \"0s\"",
            "limits.flow_idle_timeout",
            "0s",
        ),
        (
            "tcp_keepalive = \"60s\"",
            "tcp_keepalive = \"on\"",
            "limits.tcp_keepalive",
            "on",
        ),
        (
            "max_admin_connections = 64",
            "max_admin_connections = 0",
            "limits.max_admin_connections",
            "0",
        ),
        (
            "header_read_timeout = \"10s\"",
            "header_read_timeout = \"1ms\"",
            "limits.header_read_timeout",
            "1ms",
        ),
    ] {
        assert!(CORE.contains(from), "core.toml lacks {from}");
        let p = problems(&CORE.replace(from, to));
        // A too-small flow_budget also leaves edge_flow_budget above it: reported second.
        assert!(
            p.iter().all(|p| p.path.starts_with("limits.")),
            "{to}: {p:?}"
        );
        assert_eq!(
            (p[0].path.as_str(), p[0].value.as_str()),
            (path, value),
            "{to}"
        );
    }
}

#[test]
fn core_only_limits_are_refused_in_an_edge_config() {
    let t = EDGE.replace(
        "[limits]\n",
        "[limits]\nmax_flows_per_edge = 10\nopen_timeout = \"1s\"\n",
    );
    let p = problems(&t);
    let paths: Vec<&str> = p.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(
        paths,
        vec!["limits.max_flows_per_edge", "limits.open_timeout"]
    );
    assert!(p[0].reason.contains("core only"), "{p:?}");
}
