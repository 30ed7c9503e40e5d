#![allow(clippy::unwrap_used)]

use super::*;
use crate::safetensors::tests::build_safetensors;
use crate::stats::ClassStats;

fn classifier(toml_text: &str) -> Classifier {
    Classifier::new(toml::from_str(toml_text).unwrap()).unwrap()
}

fn config_error(toml_text: &str) -> String {
    Classifier::new(toml::from_str(toml_text).unwrap())
        .unwrap_err()
        .to_string()
}

fn req<'a>(host: &'a str, method: &'a str, path: &'a str) -> FlowInfo<'a> {
    FlowInfo {
        route: "proxy",
        host: Some(host),
        path: Some(path),
        method: Some(method),
        prefix: None,
    }
}

fn name(c: &Classifier, v: &Verdict) -> String {
    c.class(v.class).name.clone()
}

const EXAMPLE: &str = r#"
[[class]]
name = "llm-api"
action = "allow"
priority = 10
rate_limit = "50MB/s"
dedup = true
compression = 3
fec = "adaptive"

[[class]]
name = "checkpoints"
priority = -5
compression = false
fec = { k = 32, m = 4 }

[[rule]]
class = "llm-api"
host = "*.openai.com"
path = "/v1/*"

[[rule]]
class = "checkpoints"
route = "s3"
format = "safetensors"

[[rule]]
class = "bulk"
route = "s3"

[ai]
sanctioned = ["api.openai.com", "*.internal.example"]
shadow_action = "log"
"#;

#[test]
fn example_config_resolves_classes_and_passes_fec_through() {
    let c = classifier(EXAMPLE);
    let llm = c.class(c.class_id("llm-api").unwrap());
    assert_eq!(llm.priority, 10);
    assert_eq!(llm.rate_limit.map(|r| r.bytes_per_sec()), Some(50_000_000));
    assert!(llm.dedup);
    assert_eq!(llm.fec, Some(toml::Value::String("adaptive".into())));
    let ck = c.class(c.class_id("checkpoints").unwrap());
    // New class: unset fields come from the built-in `default`.
    assert_eq!(
        (ck.action, ck.priority, ck.dedup, ck.compression),
        (Action::Allow, -5, true, None)
    );
    assert_eq!(
        ck.fec
            .as_ref()
            .and_then(|f| f.get("m"))
            .and_then(|m| m.as_integer()),
        Some(4)
    );
    assert_eq!(
        &c.classes()[..BUILTIN_CLASSES.len()]
            .iter()
            .map(|p| p.name.as_str())
            .collect::<Vec<_>>(),
        &BUILTIN_CLASSES
    );
}

#[test]
fn first_matching_rule_wins() {
    let c = classifier(EXAMPLE);
    let st = build_safetensors(&[("w", "BF16", &[16])], 1);
    let flow = FlowInfo {
        route: "s3",
        host: Some("minio.local:9000"),
        path: Some("/bucket/model.safetensors"),
        method: Some("PUT"),
        prefix: Some(&st),
    };
    let v = c.classify(&flow);
    assert_eq!(
        (name(&c, &v), v.rule, v.format),
        ("checkpoints".into(), Some(1), Some(Format::Safetensors))
    );
    assert_eq!(v.float_dtype, Some(FloatDtype::Bf16));
    // Same route without the format: falls to the next rule.
    let v = c.classify(&FlowInfo {
        prefix: Some(b"hello"),
        ..flow
    });
    assert_eq!((name(&c, &v), v.rule), ("bulk".into(), Some(2)));
    // No prefix at all: a format matcher cannot match.
    let v = c.classify(&FlowInfo {
        prefix: None,
        ..flow
    });
    assert_eq!(v.rule, Some(2));
}

#[test]
fn host_globs_ignore_case_and_port_and_paths_ignore_query() {
    let c = classifier(EXAMPLE);
    let v = c.classify(&req(
        "API.OpenAI.com:443",
        "POST",
        "/v1/chat/completions?stream=true",
    ));
    assert_eq!((name(&c, &v), v.rule), ("llm-api".into(), Some(0)));
    assert!(v.is_llm_api && !v.is_shadow_ai);
    assert_eq!(v.action, Action::Allow);
    assert_eq!(v.priority, 10);
    // Path outside /v1/*: rule 0 does not match, the built-in recognizer still does.
    let v = c.classify(&req("api.openai.com.", "POST", "/v2/thing"));
    assert_eq!(
        (name(&c, &v), v.rule, v.is_llm_api),
        ("llm-api".into(), None, true)
    );
}

#[test]
fn llm_api_to_unsanctioned_host_is_shadow_ai() {
    let c = classifier(EXAMPLE);
    let v = c.classify(&req("api.anthropic.com", "POST", "/v1/messages"));
    assert_eq!(name(&c, &v), "shadow-ai");
    assert!(v.is_llm_api && v.is_shadow_ai);
    assert_eq!(v.action, Action::Log);
    // Sanctioned by glob.
    let v = c.classify(&req(
        "llm.internal.example:8000",
        "POST",
        "/v1/chat/completions",
    ));
    assert_eq!((name(&c, &v), v.is_shadow_ai), ("llm-api".into(), false));
    // Unknown provider recognised by its OpenAI-compatible path.
    let v = c.classify(&req(
        "cheap-llm.example.net",
        "POST",
        "/openai/v1/chat/completions",
    ));
    assert!(v.is_shadow_ai);
    let v = c.classify(&req("gpu-box:11434", "POST", "/api/chat"));
    assert!(v.is_shadow_ai);
    let v = c.classify(&req(
        "generativelanguage.googleapis.com",
        "POST",
        "/v1beta/models/gemini-2.0-flash:generateContent",
    ));
    assert!(v.is_shadow_ai);
    // CONNECT tunnel: only the host is known.
    let v = c.classify(&FlowInfo {
        route: "proxy",
        host: Some("bedrock-runtime.eu-west-1.amazonaws.com:443"),
        ..Default::default()
    });
    assert!(v.is_shadow_ai);
}

#[test]
fn non_post_or_unrelated_paths_are_not_llm_api() {
    let c = Classifier::default();
    for (host, method, path) in [
        ("intranet.example", "GET", "/api/chat"),
        ("pypi.org", "GET", "/simple/numpy/"),
        ("s3.amazonaws.com", "PUT", "/bucket/v1/messages.tar"),
        ("example.com", "POST", "/v1/messagesX"),
        ("notopenai.com", "POST", "/upload"),
    ] {
        let v = c.classify(&req(host, method, path));
        assert!(!v.is_llm_api, "{host} {method} {path}");
        assert_eq!(name(&c, &v), "default");
    }
}

#[test]
fn shadow_action_deny_applies_even_when_a_rule_chose_another_class() {
    let c = classifier(
        r#"
        [[rule]]
        class = "bulk"
        host = "*.anthropic.com"
        [ai]
        sanctioned = ["api.openai.com"]
        shadow_action = "deny"
        "#,
    );
    let flow = req("api.anthropic.com", "POST", "/v1/messages");
    let v = c.classify(&flow);
    assert_eq!(
        (name(&c, &v), v.action, v.is_shadow_ai),
        ("bulk".into(), Action::Deny, true)
    );
    let body = c.deny_body(&v, &flow);
    assert!(
        body.contains("api.anthropic.com")
            && body.contains("ai.sanctioned")
            && body.contains("\"bulk\""),
        "{body}"
    );
    let v = c.classify(&req("api.openai.com", "POST", "/v1/chat/completions"));
    assert_eq!(v.action, Action::Allow);
}

#[test]
fn class_deny_and_log_actions_apply() {
    let c = classifier(
        r#"
        [[class]]
        name = "blocked"
        action = "deny"
        [[class]]
        name = "watched"
        action = "log"
        [[rule]]
        class = "blocked"
        host = "*.pastebin.com"
        [[rule]]
        class = "watched"
        path = "/upload/*"
        method = "PUT"
        "#,
    );
    let v = c.classify(&req("www.PASTEBIN.com", "GET", "/"));
    assert_eq!(
        (name(&c, &v), v.action, v.is_shadow_ai),
        ("blocked".into(), Action::Deny, false)
    );
    assert!(c
        .deny_body(&v, &req("www.pastebin.com", "GET", "/"))
        .contains("rule[0]"));
    assert_eq!(
        c.classify(&req("files.example", "PUT", "/upload/a")).action,
        Action::Log
    );
    assert_eq!(
        c.classify(&req("files.example", "POST", "/upload/a"))
            .action,
        Action::Allow
    );
}

#[test]
fn formats_map_to_builtin_classes_with_their_data_path_settings() {
    let c = Classifier::default();
    let classify = |prefix: &[u8]| {
        c.classify(&FlowInfo {
            route: "r",
            prefix: Some(prefix),
            ..Default::default()
        })
    };
    let st = build_safetensors(&[("w", "F32", &[4])], 2);
    let v = classify(&st);
    assert_eq!(
        (name(&c, &v), v.dedup, v.compression),
        ("model".into(), true, Some(3))
    );
    let v = classify(b"PAR1\x15\x00\x15\x00");
    assert_eq!(name(&c, &v), "dataset");
    let v = classify(b"\xFF\xD8\xFF\xE0\x00\x10JFIF\x00");
    assert_eq!(
        (name(&c, &v), v.dedup, v.compression),
        ("media".into(), true, None)
    );
    let v = classify(b"plain text, nothing to see");
    assert_eq!((name(&c, &v), v.format), ("default".into(), None));
    // Built-in priorities: interactive inference overtakes bulk model transfers.
    assert!(
        c.class(c.class_id("llm-api").unwrap()).priority
            > c.class(c.class_id("model").unwrap()).priority
    );
}

#[test]
fn overriding_a_builtin_keeps_unset_fields() {
    let c = classifier("[[class]]\nname = \"media\"\npriority = 7\n");
    let m = c.class(c.class_id("media").unwrap());
    assert_eq!(
        (m.priority, m.dedup, m.compression, m.action),
        (7, true, None, Action::Allow)
    );
    assert_eq!(c.classes().len(), BUILTIN_CLASSES.len());
}

#[test]
fn config_errors_name_the_dotted_field_and_value() {
    let cases = [
        (
            "[[rule]]\nclass = \"bulk\"\n[[rule]]\nclass = \"bulk\"\n[[rule]]\nclass = \"foo\"\n",
            r#"rule[2].class = "foo": unknown class"#,
        ),
        (
            "[[class]]\nname = \"x\"\nrate_limit = \"50XB/s\"\n",
            r#"class[0].rate_limit = "50XB/s": unknown unit prefix "X""#,
        ),
        (
            "[[class]]\nname = \"a\"\n[[class]]\nname = \"a\"\n",
            r#"class[1].name = "a": duplicate class (also class[0])"#,
        ),
        (
            "[[class]]\nname = \"Bad Name\"\n",
            r#"class[0].name = "Bad Name": must be"#,
        ),
        (
            "[[class]]\nname = \"x\"\ncompression = 99\n",
            r#"class[0].compression = "99": zstd level"#,
        ),
        (
            "[ai]\nshadow_action = \"allow\"\n",
            r#"ai.shadow_action = "allow": must be log or deny"#,
        ),
        (
            "[ai]\nsanctioned = [\"ok.com\", \"https://bad.com/\"]\n",
            r#"ai.sanctioned[1] = "https://bad.com/": host pattern"#,
        ),
        (
            "[[rule]]\nclass = \"bulk\"\nformat = \"pickle\"\n",
            r#"rule[0].format = "pickle": unknown format (known: safetensors, gguf"#,
        ),
        (
            "[[rule]]\nclass = \"bulk\"\npath = \"v1/*\"\n",
            r#"rule[0].path = "v1/*": path pattern must start"#,
        ),
        (
            "[[rule]]\nclass = \"bulk\"\nhost = \"\"\n",
            r#"rule[0].host = "": empty pattern"#,
        ),
        (
            "[[rule]]\nclass = \"bulk\"\nmethod = \"get\"\n",
            r#"rule[0].method = "get": must be an upper-case"#,
        ),
    ];
    for (text, want) in cases {
        let got = config_error(text);
        assert!(got.starts_with(want), "got {got:?}, want prefix {want:?}");
    }
}

#[test]
fn unknown_keys_and_bad_actions_fail_at_parse_time() {
    assert!(toml::from_str::<PolicyConfig>("[[rule]]\nclass = \"a\"\nhots = \"x\"\n").is_err());
    assert!(
        toml::from_str::<PolicyConfig>("[[class]]\nname = \"a\"\naction = \"block\"\n").is_err()
    );
}

#[test]
fn class_stats_count_verdicts_and_bytes() {
    let c = classifier("[ai]\nshadow_action = \"deny\"\n");
    let stats = ClassStats::new(&c);
    let v = c.classify(&req("api.mistral.ai", "POST", "/v1/chat/completions"));
    stats.get(v.class).record_verdict(&v, true);
    stats.get(v.class).record_verdict(&v, false);
    stats.get(v.class).add_bytes(1000, 300);
    stats.get(v.class).add_bytes(10, 40);
    let snap = stats.snapshot();
    let s = snap.iter().find(|s| s.class == "shadow-ai").unwrap();
    assert_eq!(
        (
            s.flows,
            s.requests,
            s.denied,
            s.shadow_ai,
            s.logical_bytes,
            s.wan_bytes,
            s.saved_bytes
        ),
        (1, 1, 2, 2, 1010, 340, 700)
    );
    assert_eq!(snap.iter().filter(|s| s.requests > 0).count(), 1);
}
