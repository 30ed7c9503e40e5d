//! Traffic classes, rules and the [`Classifier`].
//!
//! Evaluation of one flow or request:
//! 1. sniff the payload prefix (if any) for a [`Format`];
//! 2. recognise LLM API traffic by host or API path; LLM API traffic to a host not on
//!    `ai.sanctioned` is *shadow AI*;
//! 3. the first `[[rule]]` whose every given matcher matches picks the class;
//! 4. otherwise the built-ins: `shadow-ai`, `llm-api`, then `model` / `dataset` / `media` by
//!    format, then `default`;
//! 5. shadow AI is never treated more leniently than `ai.shadow_action`, whichever class a rule
//!    chose: sanctioning a destination is done in `ai.sanctioned`, not by a rule that happens to match.

use serde::Deserialize;

use crate::glob::Glob;
use crate::rate::{parse_byte_rate, ByteRate};
use crate::recognize::{is_llm_api_host, is_llm_api_path, normalize_host, strip_query};
use crate::sniff::{sniff_detail, FloatDtype, Format, FormatKind};
use crate::Error;

/// The most classes (built-in and configured) a classifier holds.
pub const MAX_CLASSES: usize = 256;
/// The most rules a classifier holds; rules are scanned linearly per request.
pub const MAX_RULES: usize = 4096;
/// Longest glob pattern accepted.
pub const MAX_GLOB_LEN: usize = 1024;
/// Longest class name.
const MAX_CLASS_NAME: usize = 64;
/// zstd level used for `compression = true`.
const DEFAULT_COMPRESSION_LEVEL: i32 = 3;

/// Classes that always exist, in [`ClassId`] order. Configuring a `[[class]]` with one of these
/// names overrides the given fields of the built-in.
pub const BUILTIN_CLASSES: [&str; 8] = [
    "default",
    "llm-api",
    "shadow-ai",
    "model",
    "dataset",
    "media",
    "bulk",
    "interactive",
];

/// What happens to traffic of a class. Ordered from most to least lenient.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, serde::Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Carry it.
    Allow,
    /// Carry it and log it.
    Log,
    /// Refuse it (HTTP 403 with [`Classifier::deny_body`], or close the flow).
    Deny,
}

impl Action {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Log => "log",
            Action::Deny => "deny",
        }
    }
}

/// `compression = 3` (zstd level) or `compression = false` / `true` (default level).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum Compression {
    /// `true`: zstd at the default level; `false`: no compression.
    Enabled(bool),
    /// zstd level, -7 ..= 22.
    Level(i64),
}

/// The policy sections of the config file: `[[class]]`, `[[rule]]` and `[ai]`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct PolicyConfig {
    /// `[[class]]`: new classes, or overrides of the built-in ones.
    #[serde(default, rename = "class")]
    pub classes: Vec<ClassConfig>,
    /// `[[rule]]`: evaluated in order, first match wins.
    #[serde(default, rename = "rule")]
    pub rules: Vec<RuleConfig>,
    /// `[ai]`: sanctioned LLM API destinations and the shadow-AI action.
    #[serde(default)]
    pub ai: AiConfig,
}

/// One `[[class]]` table. Unset fields keep the built-in's value (for a built-in name) or the
/// `default` class's built-in value (for a new name).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassConfig {
    /// Class name: lower-case letters, digits, `-` and `_`.
    pub name: String,
    /// allow | deny | log.
    pub action: Option<Action>,
    /// QUIC stream priority (`SendStream::set_priority`); higher is sent first.
    pub priority: Option<i32>,
    /// Rate cap, e.g. `"50MB/s"`, `"100Mbit/s"`; unset = uncapped.
    pub rate_limit: Option<String>,
    /// Content-defined dedup on or off.
    pub dedup: Option<bool>,
    /// zstd level, or `false` to send uncompressed.
    pub compression: Option<Compression>,
    /// FEC setting, passed through to the transport as written.
    pub fec: Option<toml::Value>,
}

/// One `[[rule]]` table. Every matcher given must match; a rule with none matches everything.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Class assigned on a match.
    pub class: String,
    /// Glob on the destination host (case-insensitive, port ignored).
    pub host: Option<String>,
    /// Glob on the HTTP path (query string ignored).
    pub path: Option<String>,
    /// Glob on the route name.
    pub route: Option<String>,
    /// Sniffed payload format ([`Format::name`]).
    pub format: Option<String>,
    /// HTTP method, exact (e.g. `"PUT"`).
    pub method: Option<String>,
}

/// The `[ai]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AiConfig {
    /// Host globs of LLM API destinations that are allowed; LLM API traffic elsewhere is shadow AI.
    #[serde(default)]
    pub sanctioned: Vec<String>,
    /// What to do with shadow AI: log | deny.
    #[serde(default = "default_shadow_action")]
    pub shadow_action: Action,
    /// Extra LLM API host globs, on top of the built-in list.
    #[serde(default)]
    pub llm_hosts: Vec<String>,
    /// Extra LLM API path globs, on top of the built-in list.
    #[serde(default)]
    pub llm_paths: Vec<String>,
}

fn default_shadow_action() -> Action {
    Action::Log
}

impl Default for AiConfig {
    fn default() -> Self {
        AiConfig {
            sanctioned: Vec::new(),
            shadow_action: Action::Log,
            llm_hosts: Vec::new(),
            llm_paths: Vec::new(),
        }
    }
}

/// Index of a class in its [`Classifier`] (and in [`ClassStats`](crate::ClassStats)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClassId(u16);

impl ClassId {
    /// The `default` class.
    pub const DEFAULT: ClassId = ClassId(0);
    const LLM_API: ClassId = ClassId(1);
    const SHADOW_AI: ClassId = ClassId(2);
    const MODEL: ClassId = ClassId(3);
    const DATASET: ClassId = ClassId(4);
    const MEDIA: ClassId = ClassId(5);

    /// Position in [`Classifier::classes`].
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// A class with its resolved policy.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassPolicy {
    /// Class name (the `class` label in statistics).
    pub name: String,
    /// allow / log / deny.
    pub action: Action,
    /// QUIC stream priority; higher first.
    pub priority: i32,
    /// Rate cap.
    pub rate_limit: Option<ByteRate>,
    /// Dedup on or off.
    pub dedup: bool,
    /// zstd level, or `None` for no compression.
    pub compression: Option<i32>,
    /// FEC setting as configured, for the transport to interpret; `None` = transport default.
    pub fec: Option<toml::Value>,
}

fn builtin(name: &str) -> ClassPolicy {
    let (action, priority, dedup, compression) = match name {
        // Inference calls are small and latency-bound: sent first, no dedup round trips.
        "llm-api" => (Action::Allow, 20, false, Some(DEFAULT_COMPRESSION_LEVEL)),
        // The action is replaced by `ai.shadow_action` unless configured.
        "shadow-ai" => (Action::Log, 20, false, Some(DEFAULT_COMPRESSION_LEVEL)),
        "model" | "dataset" => (Action::Allow, -10, true, Some(DEFAULT_COMPRESSION_LEVEL)),
        // Already compressed: zstd would burn CPU for nothing, but identical files still dedup.
        "media" => (Action::Allow, -10, true, None),
        "bulk" => (Action::Allow, -20, true, Some(DEFAULT_COMPRESSION_LEVEL)),
        "interactive" => (Action::Allow, 30, false, Some(1)),
        _ => (Action::Allow, 0, true, Some(DEFAULT_COMPRESSION_LEVEL)),
    };
    ClassPolicy {
        name: name.to_owned(),
        action,
        priority,
        rate_limit: None,
        dedup,
        compression,
        fec: None,
    }
}

/// What the classifier is told about a flow or request. Unknown fields are `None`.
#[derive(Debug, Clone, Copy, Default)]
pub struct FlowInfo<'a> {
    /// Route name (HTTP proxy, S3 route, forward).
    pub route: &'a str,
    /// Destination host, with or without `:port`.
    pub host: Option<&'a str>,
    /// HTTP request path (query string allowed; ignored).
    pub path: Option<&'a str>,
    /// HTTP method.
    pub method: Option<&'a str>,
    /// First bytes of the payload (up to [`SNIFF_PREFIX_LEN`](crate::SNIFF_PREFIX_LEN)).
    pub prefix: Option<&'a [u8]>,
}

/// The classification of one flow or request and the policy to apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// The class ([`Classifier::class`] gives its name and FEC setting).
    pub class: ClassId,
    /// Effective action (for shadow AI at least `ai.shadow_action`).
    pub action: Action,
    /// QUIC stream priority.
    pub priority: i32,
    /// Rate cap.
    pub rate_limit: Option<ByteRate>,
    /// Dedup on or off.
    pub dedup: bool,
    /// zstd level or none.
    pub compression: Option<i32>,
    /// The destination or path is an LLM API.
    pub is_llm_api: bool,
    /// LLM API traffic to a destination not on `ai.sanctioned`.
    pub is_shadow_ai: bool,
    /// Sniffed payload format.
    pub format: Option<Format>,
    /// Float element type the payload header declares, for the tensor codec.
    pub float_dtype: Option<FloatDtype>,
    /// Index of the `[[rule]]` that matched, if any.
    pub rule: Option<usize>,
}

#[derive(Debug, Clone)]
struct Rule {
    class: ClassId,
    host: Option<Glob>,
    path: Option<Glob>,
    route: Option<Glob>,
    format: Option<Format>,
    method: Option<String>,
}

/// Classifies flows and requests by configured rules and built-in recognizers. Immutable and
/// `Sync`: share one behind an `Arc` and swap it on reload.
#[derive(Debug, Clone)]
pub struct Classifier {
    classes: Vec<ClassPolicy>,
    rules: Vec<Rule>,
    sanctioned: Vec<Glob>,
    shadow_action: Action,
    llm_hosts: Vec<Glob>,
    llm_paths: Vec<Glob>,
}

impl Default for Classifier {
    /// Built-in classes only, nothing sanctioned, shadow AI logged.
    fn default() -> Self {
        match Classifier::new(PolicyConfig::default()) {
            Ok(c) => c,
            // The empty config has nothing to reject; keep a usable value regardless.
            Err(_) => Classifier {
                classes: BUILTIN_CLASSES.iter().map(|n| builtin(n)).collect(),
                rules: Vec::new(),
                sanctioned: Vec::new(),
                shadow_action: Action::Log,
                llm_hosts: Vec::new(),
                llm_paths: Vec::new(),
            },
        }
    }
}

impl Classifier {
    /// Validate `cfg` and build the classifier. Errors name the dotted field and its value.
    pub fn new(cfg: PolicyConfig) -> Result<Classifier, Error> {
        let ai = &cfg.ai;
        let shadow_action = match ai.shadow_action {
            Action::Allow => {
                return Err(Error::config(
                    "ai.shadow_action",
                    "allow",
                    "must be log or deny (sanction a destination in ai.sanctioned instead)",
                ))
            }
            a => a,
        };
        let sanctioned = host_globs("ai.sanctioned", &ai.sanctioned)?;
        let llm_hosts = host_globs("ai.llm_hosts", &ai.llm_hosts)?;
        let llm_paths = ai
            .llm_paths
            .iter()
            .enumerate()
            .map(|(i, p)| path_glob(&format!("ai.llm_paths[{i}]"), p))
            .collect::<Result<Vec<_>, _>>()?;

        let mut classes: Vec<ClassPolicy> = BUILTIN_CLASSES.iter().map(|n| builtin(n)).collect();
        classes[ClassId::SHADOW_AI.index()].action = shadow_action;
        if BUILTIN_CLASSES.len() + cfg.classes.len() > MAX_CLASSES {
            return Err(Error::config(
                "class",
                format!("{} entries", cfg.classes.len()),
                format!(
                    "at most {} classes besides the {} built-in",
                    MAX_CLASSES - BUILTIN_CLASSES.len(),
                    BUILTIN_CLASSES.len()
                ),
            ));
        }
        let mut configured: Vec<&str> = Vec::new();
        for (i, c) in cfg.classes.iter().enumerate() {
            let field = |f: &str| format!("class[{i}].{f}");
            validate_class_name(&field("name"), &c.name)?;
            if let Some(j) = configured.iter().position(|n| *n == c.name) {
                return Err(Error::config(
                    field("name"),
                    &c.name,
                    format!("duplicate class (also class[{j}])"),
                ));
            }
            configured.push(&c.name);
            let idx = match classes.iter().position(|p| p.name == c.name) {
                Some(idx) => idx,
                None => {
                    let mut p = builtin("default");
                    p.name = c.name.clone();
                    classes.push(p);
                    classes.len() - 1
                }
            };
            let p = &mut classes[idx];
            if let Some(a) = c.action {
                p.action = a;
            }
            if let Some(pr) = c.priority {
                p.priority = pr;
            }
            if let Some(r) = &c.rate_limit {
                p.rate_limit =
                    Some(parse_byte_rate(r).map_err(|e| Error::config(field("rate_limit"), r, e))?);
            }
            if let Some(d) = c.dedup {
                p.dedup = d;
            }
            match c.compression {
                None => {}
                Some(Compression::Enabled(false)) => p.compression = None,
                Some(Compression::Enabled(true)) => p.compression = Some(DEFAULT_COMPRESSION_LEVEL),
                Some(Compression::Level(l)) => {
                    if !(-7..=22).contains(&l) {
                        return Err(Error::config(
                            field("compression"),
                            l.to_string(),
                            "zstd level must be -7 ..= 22 or false",
                        ));
                    }
                    p.compression = Some(l as i32);
                }
            }
            if let Some(f) = &c.fec {
                p.fec = Some(f.clone());
            }
        }

        if cfg.rules.len() > MAX_RULES {
            return Err(Error::config(
                "rule",
                format!("{} entries", cfg.rules.len()),
                format!("at most {MAX_RULES} rules"),
            ));
        }
        let mut rules = Vec::with_capacity(cfg.rules.len());
        for (i, r) in cfg.rules.iter().enumerate() {
            let field = |f: &str| format!("rule[{i}].{f}");
            let class = classes
                .iter()
                .position(|p| p.name == r.class)
                .ok_or_else(|| Error::config(field("class"), &r.class, "unknown class"))?;
            let host = r
                .host
                .as_deref()
                .map(|h| host_glob(&field("host"), h))
                .transpose()?;
            let path = r
                .path
                .as_deref()
                .map(|p| path_glob(&field("path"), p))
                .transpose()?;
            let route = r
                .route
                .as_deref()
                .map(|p| plain_glob(&field("route"), p))
                .transpose()?;
            let format = match r.format.as_deref() {
                None => None,
                Some(f) => Some(Format::from_name(f).ok_or_else(|| {
                    let names: Vec<&str> = Format::ALL.iter().map(|f| f.name()).collect();
                    Error::config(
                        field("format"),
                        f,
                        format!("unknown format (known: {})", names.join(", ")),
                    )
                })?),
            };
            let method = match r.method.as_deref() {
                None => None,
                Some(m)
                    if !m.is_empty() && m.bytes().all(|b| b.is_ascii_uppercase() || b == b'-') =>
                {
                    Some(m.to_owned())
                }
                Some(m) => {
                    return Err(Error::config(
                        field("method"),
                        m,
                        "must be an upper-case HTTP method",
                    ))
                }
            };
            rules.push(Rule {
                class: ClassId(class as u16),
                host,
                path,
                route,
                format,
                method,
            });
        }

        Ok(Classifier {
            classes,
            rules,
            sanctioned,
            shadow_action,
            llm_hosts,
            llm_paths,
        })
    }

    /// All classes in [`ClassId`] order (built-ins first).
    pub fn classes(&self) -> &[ClassPolicy] {
        &self.classes
    }

    /// The class `id` names; an id from another classifier gives `default`.
    pub fn class(&self, id: ClassId) -> &ClassPolicy {
        self.classes
            .get(id.index())
            .unwrap_or(&self.classes[ClassId::DEFAULT.index()])
    }

    /// The id of the class called `name`.
    pub fn class_id(&self, name: &str) -> Option<ClassId> {
        self.classes
            .iter()
            .position(|c| c.name == name)
            .map(|i| ClassId(i as u16))
    }

    /// Whether `host` is on `ai.sanctioned`.
    pub fn is_sanctioned(&self, host: &str) -> bool {
        let host = normalize_host(host);
        self.sanctioned.iter().any(|g| g.matches(host))
    }

    /// Classify a flow or request. Pure; cost is one sniff of the prefix plus a linear rule scan.
    pub fn classify(&self, flow: &FlowInfo<'_>) -> Verdict {
        let sniffed = flow.prefix.and_then(sniff_detail);
        let format = sniffed.map(|s| s.format);
        let host = flow.host.map(normalize_host);
        let path = flow.path.map(strip_query);

        let host_llm =
            host.is_some_and(|h| is_llm_api_host(h) || self.llm_hosts.iter().any(|g| g.matches(h)));
        // Inference calls are POSTs; a GET of a page that happens to be at /api/chat is not one.
        let method_ok = flow.method.is_none_or(|m| m.eq_ignore_ascii_case("POST"));
        let path_llm = method_ok
            && path
                .is_some_and(|p| is_llm_api_path(p) || self.llm_paths.iter().any(|g| g.matches(p)));
        let is_llm_api = host_llm || path_llm;
        // An unknown destination cannot be on the sanctioned list.
        let is_shadow_ai =
            is_llm_api && !host.is_some_and(|h| self.sanctioned.iter().any(|g| g.matches(h)));

        let matched = self.rules.iter().position(|r| {
            r.host
                .as_ref()
                .is_none_or(|g| host.is_some_and(|h| g.matches(h)))
                && r.path
                    .as_ref()
                    .is_none_or(|g| path.is_some_and(|p| g.matches(p)))
                && r.route.as_ref().is_none_or(|g| g.matches(flow.route))
                && r.format.is_none_or(|f| format == Some(f))
                && r.method
                    .as_ref()
                    .is_none_or(|m| flow.method.is_some_and(|fm| fm.eq_ignore_ascii_case(m)))
        });
        let class = match matched {
            Some(i) => self.rules[i].class,
            None if is_shadow_ai => ClassId::SHADOW_AI,
            None if is_llm_api => ClassId::LLM_API,
            None => match format.map(Format::kind) {
                Some(FormatKind::Model) => ClassId::MODEL,
                Some(FormatKind::Dataset) => ClassId::DATASET,
                Some(FormatKind::Media) => ClassId::MEDIA,
                Some(FormatKind::Other) | None => ClassId::DEFAULT,
            },
        };
        let policy = self.class(class);
        let action = if is_shadow_ai {
            policy.action.max(self.shadow_action)
        } else {
            policy.action
        };
        Verdict {
            class,
            action,
            priority: policy.priority,
            rate_limit: policy.rate_limit,
            dedup: policy.dedup,
            compression: policy.compression,
            is_llm_api,
            is_shadow_ai,
            format,
            float_dtype: sniffed.and_then(|s| s.float_dtype),
            rule: matched,
        }
    }

    /// Body of the HTTP 403 sent for a denied request: says what was denied and why, so the
    /// person running the pipeline can act on it without reading proxy logs.
    pub fn deny_body(&self, verdict: &Verdict, flow: &FlowInfo<'_>) -> String {
        let dest = flow.host.map(normalize_host).unwrap_or("this destination");
        let class = &self.class(verdict.class).name;
        let mut body = format!("strait: request to {dest} denied by policy (class \"{class}\"");
        if let Some(i) = verdict.rule {
            body.push_str(&format!(", rule[{i}]"));
        }
        body.push(')');
        if verdict.is_shadow_ai {
            body.push_str(&format!(
                ": {dest} is an LLM API that is not on the sanctioned list (ai.sanctioned); \
                 ask your administrator to sanction it or use an approved provider"
            ));
        }
        body.push('\n');
        body
    }
}

fn validate_class_name(field: &str, name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= MAX_CLASS_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(Error::config(
            field,
            name,
            format!("must be 1..={MAX_CLASS_NAME} of a-z, 0-9, '-', '_'"),
        ))
    }
}

fn check_len(field: &str, pattern: &str) -> Result<(), Error> {
    if pattern.is_empty() {
        return Err(Error::config(
            field,
            pattern,
            "empty pattern (omit the field to match anything)",
        ));
    }
    if pattern.len() > MAX_GLOB_LEN {
        return Err(Error::config(
            field,
            pattern,
            format!("pattern longer than {MAX_GLOB_LEN} bytes"),
        ));
    }
    Ok(())
}

fn host_glob(field: &str, pattern: &str) -> Result<Glob, Error> {
    check_len(field, pattern)?;
    let ok = pattern
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-._*?:[]".contains(&b));
    if !ok {
        return Err(Error::config(
            field,
            pattern,
            "host pattern may hold only letters, digits, '-', '.', '_', ':', '[', ']', '*', '?'",
        ));
    }
    if pattern.contains('/') {
        return Err(Error::config(
            field,
            pattern,
            "host pattern must not contain '/'",
        ));
    }
    Ok(Glob::new_case_insensitive(normalize_host(pattern)))
}

fn host_globs(field: &str, patterns: &[String]) -> Result<Vec<Glob>, Error> {
    if patterns.len() > MAX_RULES {
        return Err(Error::config(
            field,
            format!("{} entries", patterns.len()),
            format!("at most {MAX_RULES} entries"),
        ));
    }
    patterns
        .iter()
        .enumerate()
        .map(|(i, p)| host_glob(&format!("{field}[{i}]"), p))
        .collect()
}

fn path_glob(field: &str, pattern: &str) -> Result<Glob, Error> {
    check_len(field, pattern)?;
    if !(pattern.starts_with('/') || pattern.starts_with('*')) {
        return Err(Error::config(
            field,
            pattern,
            "path pattern must start with '/' or '*'",
        ));
    }
    if pattern.contains('#') {
        return Err(Error::config(
            field,
            pattern,
            "path pattern must not contain a fragment ('#')",
        ));
    }
    Ok(Glob::new(pattern))
}

fn plain_glob(field: &str, pattern: &str) -> Result<Glob, Error> {
    check_len(field, pattern)?;
    Ok(Glob::new(pattern))
}

#[cfg(test)]
mod tests;
