//! Per-class statistics as metric families, and the policy a class verdict gives a flow.

use strait_admin::ExtraFamily;
use strait_classify::{ClassStats, Verdict};
use strait_config::RoutePolicy;

/// `strait_class_*` families from the class counters.
pub fn class_families(stats: &ClassStats) -> Vec<ExtraFamily> {
    let snaps = stats.snapshot();
    let fam =
        |name: &str, help: &str, f: &dyn Fn(&strait_classify::ClassSnapshot) -> u64| ExtraFamily {
            name: name.to_string(),
            help: help.to_string(),
            kind: "counter",
            samples: snaps
                .iter()
                .map(|s| (vec![("class".to_string(), s.class.clone())], f(s) as f64))
                .collect(),
        };
    vec![
        fam("class_flows_total", "Flows per traffic class.", &|s| {
            s.flows
        }),
        fam(
            "class_requests_total",
            "HTTP requests per traffic class.",
            &|s| s.requests,
        ),
        fam(
            "class_logical_bytes_total",
            "Client bytes per traffic class.",
            &|s| s.logical_bytes,
        ),
        fam(
            "class_wan_bytes_total",
            "Tunnel bytes per traffic class.",
            &|s| s.wan_bytes,
        ),
        fam(
            "class_saved_bytes_total",
            "Bytes saved per traffic class.",
            &|s| s.saved_bytes,
        ),
        fam(
            "class_denied_total",
            "Flows or requests denied by policy.",
            &|s| s.denied,
        ),
        fam(
            "class_shadow_ai_total",
            "LLM API traffic to destinations not sanctioned.",
            &|s| s.shadow_ai,
        ),
    ]
}

/// The data-path settings of a flow: a class chosen by a configured rule overrides the route's
/// settings; a built-in classification keeps the route's.
pub fn effective_policy(route: RoutePolicy, verdict: &Verdict) -> RoutePolicy {
    if verdict.rule.is_some() {
        RoutePolicy {
            dedup: verdict.dedup,
            delta: route.delta && verdict.dedup,
            compression: verdict.compression,
        }
    } else {
        route
    }
}
