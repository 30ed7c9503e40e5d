//! Built-in recognizers for LLM API traffic: well-known provider hosts and the request paths of
//! the common inference APIs (OpenAI-compatible, Anthropic, Gemini/Vertex, Azure OpenAI, Ollama).
//! Paths matter because self-hosted and lesser-known providers speak the OpenAI-compatible API on
//! hosts no list can enumerate.

use std::sync::OnceLock;

use crate::glob::Glob;

/// Host patterns of well-known hosted LLM APIs (case-insensitive globs).
pub const LLM_API_HOSTS: &[&str] = &[
    "api.openai.com",
    "*.openai.azure.com",
    "*.cognitiveservices.azure.com",
    "*.services.ai.azure.com",
    "api.anthropic.com",
    "generativelanguage.googleapis.com",
    "aiplatform.googleapis.com",
    "*-aiplatform.googleapis.com",
    "api.mistral.ai",
    "api.cohere.ai",
    "api.cohere.com",
    "api.groq.com",
    "api.together.xyz",
    "api.together.ai",
    "api.deepseek.com",
    "bedrock-runtime.*.amazonaws.com",
    "bedrock-runtime-fips.*.amazonaws.com",
    "api-inference.huggingface.co",
    "router.huggingface.co",
    "*.endpoints.huggingface.cloud",
    "api.perplexity.ai",
    "api.x.ai",
    "api.fireworks.ai",
    "openrouter.ai",
    "api.replicate.com",
    "api.ai21.com",
    "api.voyageai.com",
    "api.deepinfra.com",
    "api.cerebras.ai",
    "api.sambanova.ai",
    "dashscope.aliyuncs.com",
    "dashscope-intl.aliyuncs.com",
    "api.moonshot.ai",
    "api.moonshot.cn",
];

/// Request-path patterns of LLM inference APIs (case-sensitive globs, query string excluded).
pub const LLM_API_PATHS: &[&str] = &[
    // OpenAI and OpenAI-compatible servers (vLLM, LiteLLM, TGI, llama.cpp, Groq's /openai/v1, ...)
    "*/chat/completions",
    "*/v1/completions",
    "*/v1/embeddings",
    "*/v1/responses",
    // Anthropic
    "*/v1/messages",
    // Gemini API and Vertex AI
    "*/models/*:generateContent",
    "*/models/*:streamGenerateContent",
    "*/models/*:embedContent",
    "*/models/*:batchEmbedContents",
    "*/models/*:rawPredict",
    "*/models/*:streamRawPredict",
    // Azure OpenAI deployments
    "/openai/deployments/*/completions",
    "/openai/deployments/*/embeddings",
    // Ollama
    "/api/generate",
    "/api/chat",
    "/api/embed",
    "/api/embeddings",
    // Bedrock's `/model/*/invoke` is too generic to match on its own; its host is in the list.
];

fn host_globs() -> &'static [Glob] {
    static G: OnceLock<Vec<Glob>> = OnceLock::new();
    G.get_or_init(|| {
        LLM_API_HOSTS
            .iter()
            .map(|h| Glob::new_case_insensitive(h))
            .collect()
    })
}

fn path_globs() -> &'static [Glob] {
    static G: OnceLock<Vec<Glob>> = OnceLock::new();
    G.get_or_init(|| LLM_API_PATHS.iter().map(|p| Glob::new(p)).collect())
}

/// Whether `host` (port and trailing dot ignored) is a well-known LLM API host.
pub fn is_llm_api_host(host: &str) -> bool {
    let host = normalize_host(host);
    host_globs().iter().any(|g| g.matches(host))
}

/// Whether `path` (query string ignored) is an LLM inference API path.
pub fn is_llm_api_path(path: &str) -> bool {
    let path = strip_query(path);
    path_globs().iter().any(|g| g.matches(path))
}

/// Host without port, IPv6 brackets or a trailing root dot; case is handled by the globs.
pub(crate) fn normalize_host(host: &str) -> &str {
    let host = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else {
        match host.rsplit_once(':') {
            // One colon only: host:port. More colons: a bare IPv6 address.
            Some((h, port)) if !h.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => host,
        }
    };
    host.strip_suffix('.').unwrap_or(host)
}

pub(crate) fn strip_query(path: &str) -> &str {
    path.split(['?', '#']).next().unwrap_or(path)
}
