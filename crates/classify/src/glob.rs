//! Minimal glob patterns for hosts, paths and routes: `*` matches any run of bytes (including `/`
//! and `.`), `?` matches one byte, everything else matches itself. Kept this small on purpose:
//! operators write `*.openai.com` and `/v1/*`, and a tiny matcher has no surprising syntax.

/// A compiled glob pattern. Host patterns are compiled case-insensitively.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    pattern: Box<[u8]>,
    case_insensitive: bool,
}

impl Glob {
    /// A case-sensitive pattern (paths, routes).
    pub fn new(pattern: &str) -> Self {
        Glob {
            pattern: pattern.as_bytes().into(),
            case_insensitive: false,
        }
    }

    /// A case-insensitive pattern (DNS host names).
    pub fn new_case_insensitive(pattern: &str) -> Self {
        Glob {
            pattern: pattern.to_ascii_lowercase().into_bytes().into(),
            case_insensitive: true,
        }
    }

    /// The pattern as written (lower-cased if case-insensitive).
    pub fn as_str(&self) -> &str {
        // Built from a &str, so always UTF-8; the fallback is unreachable.
        std::str::from_utf8(&self.pattern).unwrap_or("")
    }

    /// Whether `text` matches the whole pattern.
    ///
    /// Greedy star matching with a single backtrack point: linear for patterns with one `*`,
    /// O(text × pattern) in the worst case, and patterns come from the operator, not from peers.
    pub fn matches(&self, text: &str) -> bool {
        let p = &self.pattern;
        let t = text.as_bytes();
        let eq = |a: u8, b: u8| {
            if self.case_insensitive {
                a == b.to_ascii_lowercase()
            } else {
                a == b
            }
        };
        let (mut pi, mut ti) = (0usize, 0usize);
        let mut star: Option<(usize, usize)> = None;
        while ti < t.len() {
            match p.get(pi) {
                Some(b'*') => {
                    star = Some((pi, ti));
                    pi += 1;
                }
                Some(&c) if c == b'?' || eq(c, t[ti]) => {
                    pi += 1;
                    ti += 1;
                }
                _ => match star {
                    Some((sp, st)) => {
                        pi = sp + 1;
                        ti = st + 1;
                        star = Some((sp, st + 1));
                    }
                    None => return false,
                },
            }
        }
        p[pi..].iter().all(|&c| c == b'*')
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn star_matches_any_run_including_separators() {
        let g = Glob::new("/v1/*");
        assert!(g.matches("/v1/"));
        assert!(g.matches("/v1/chat/completions"));
        assert!(!g.matches("/v2/chat"));
        assert!(!g.matches("/v1"));
        let g = Glob::new("*/models/*:generateContent");
        assert!(g.matches("/v1beta/models/gemini-1.5-pro:generateContent"));
        assert!(!g.matches("/v1beta/models/gemini-1.5-pro:countTokens"));
    }

    #[test]
    fn host_glob_is_case_insensitive_and_anchored() {
        let g = Glob::new_case_insensitive("*.OpenAI.com");
        assert!(g.matches("api.openai.com"));
        assert!(g.matches("A.B.OPENAI.COM"));
        assert!(!g.matches("openai.com"));
        assert!(!g.matches("evilopenai.com"));
        assert!(!g.matches("api.openai.com.evil.net"));
        let g = Glob::new_case_insensitive("bedrock-runtime.*.amazonaws.com");
        assert!(g.matches("bedrock-runtime.us-east-1.amazonaws.com"));
        assert!(!g.matches("bedrock.us-east-1.amazonaws.com"));
    }

    #[test]
    fn question_mark_matches_exactly_one_byte() {
        let g = Glob::new("a?c");
        assert!(g.matches("abc"));
        assert!(!g.matches("ac"));
        assert!(!g.matches("abbc"));
    }

    #[test]
    fn multiple_stars_backtrack() {
        let g = Glob::new("*a*b*c");
        assert!(g.matches("xxaxxbxxc"));
        assert!(g.matches("abc"));
        assert!(!g.matches("acb"));
        assert!(Glob::new("*").matches(""));
        assert!(!Glob::new("").matches("x"));
    }
}
