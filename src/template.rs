//! Templates of extra workload-Secret keys (`spec.target.template`), the way External
//! Secrets' `target.template` and Vault Secrets Operator's transformations render them.
//!
//! The language is deliberately tiny so that it can do nothing but substitute: text with
//! `{{ variable }}` or `{{ variable | filter | filter }}` placeholders. There are no loops,
//! conditionals, includes, functions, file, environment or network access. The variables
//! are the standard token keys plus the connection's name and namespace; the refresh token
//! is never one of them. Everything is checked when the template is parsed, so rendering
//! a parsed template cannot fail.

use base64::Engine;
use std::collections::BTreeMap;
use thiserror::Error;

/// Condition reason (Ready=False) and Event reason of a template that does not parse.
pub const INVALID_TEMPLATE: &str = "InvalidTemplate";

/// Variables a template may use, documented in the README.
pub const VARIABLES: [&str; 7] = [
    "access_token",
    "token_type",
    "expires_at",
    "division",
    "api_base_url",
    "connection_name",
    "connection_namespace",
];

/// Largest accepted template, per key: a Secret holds at most 1 MiB in all.
const MAX_TEMPLATE_BYTES: usize = 64 * 1024;

/// Most placeholders over all templates of a connection: each may expand to a token of a
/// few KiB, and the rendered Secret must stay far below the 1 MiB limit.
const MAX_PLACEHOLDERS: usize = 64;

/// Why a template (or its key) is unusable. Messages quote the key and the offending
/// placeholder, never a rendered value.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum TemplateError {
    /// The key is not a valid Secret data key.
    #[error("key {key:?} is not a valid Secret key (letters, digits, '-', '_' and '.' only, at most 253, not starting with '..' or .exact-agent-tmp-)")]
    InvalidKey {
        /// The key.
        key: String,
    },
    /// The key would overwrite one the operator publishes itself.
    #[error("key {key:?} is a standard key of the workload Secret; choose another name")]
    ShadowsStandardKey {
        /// The key.
        key: String,
    },
    /// Too large.
    #[error("template of key {key:?} is larger than {MAX_TEMPLATE_BYTES} bytes")]
    TooLarge {
        /// The key.
        key: String,
    },
    /// More placeholders than the rendered Secret could hold safely.
    #[error("the templates use more than {MAX_PLACEHOLDERS} placeholders in all")]
    TooManyPlaceholders,
    /// `{{` without its `}}`.
    #[error("template of key {key:?}: '{{{{' at byte {at} is never closed with '}}}}'")]
    Unclosed {
        /// The key.
        key: String,
        /// Byte offset of the opening braces.
        at: usize,
    },
    /// `{{ }}` with no variable.
    #[error("template of key {key:?}: empty placeholder at byte {at}")]
    Empty {
        /// The key.
        key: String,
        /// Byte offset of the opening braces.
        at: usize,
    },
    /// A variable that does not exist.
    #[error("template of key {key:?}: unknown variable {name:?} (known: {})", VARIABLES.join(", "))]
    UnknownVariable {
        /// The key.
        key: String,
        /// The variable as written.
        name: String,
    },
    /// The refresh token, asked for by name.
    #[error("template of key {key:?}: the refresh token is never available to templates")]
    RefreshToken {
        /// The key.
        key: String,
    },
    /// A filter that does not exist.
    #[error("template of key {key:?}: unknown filter {name:?} (known: json, base64)")]
    UnknownFilter {
        /// The key.
        key: String,
        /// The filter as written.
        name: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Filter {
    /// A JSON string literal, quotes included.
    Json,
    /// Standard base64 with padding.
    Base64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Var {
        name: &'static str,
        filters: Vec<Filter>,
    },
}

/// The parsed templates of one connection, key -> parts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Templates {
    keys: BTreeMap<String, Vec<Part>>,
}

/// Parses and checks every template of `spec.target.template`; `standard_keys` are the
/// keys the operator writes itself, which a template may not replace.
pub fn parse_all(
    templates: &BTreeMap<String, String>,
    standard_keys: &[&str],
) -> Result<Templates, TemplateError> {
    let mut keys = BTreeMap::new();
    for (key, text) in templates {
        check_key(key, standard_keys)?;
        if text.len() > MAX_TEMPLATE_BYTES {
            return Err(TemplateError::TooLarge { key: key.clone() });
        }
        keys.insert(key.clone(), parse(key, text)?);
    }
    let placeholders = keys
        .values()
        .flatten()
        .filter(|p| matches!(p, Part::Var { .. }))
        .count();
    if placeholders > MAX_PLACEHOLDERS {
        return Err(TemplateError::TooManyPlaceholders);
    }
    Ok(Templates { keys })
}

fn check_key(key: &str, standard_keys: &[&str]) -> Result<(), TemplateError> {
    // Kubernetes' rule for Secret keys, plus the token agent's temporary-file prefix (the
    // agent writes every key as a file and skips its own temporaries).
    let valid = !key.is_empty()
        && key.len() <= 253
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && key != "."
        && !key.starts_with("..")
        && !key.starts_with(crate::agent::files::TEMP_PREFIX);
    if !valid {
        return Err(TemplateError::InvalidKey { key: key.into() });
    }
    // `refresh_token` is reserved too: a key of that name would look like one to readers.
    if standard_keys.contains(&key) || key == "refresh_token" {
        return Err(TemplateError::ShadowsStandardKey { key: key.into() });
    }
    Ok(())
}

fn parse(key: &str, text: &str) -> Result<Vec<Part>, TemplateError> {
    let mut parts = Vec::new();
    let mut rest = text;
    let mut offset = 0;
    while let Some(open) = rest.find("{{") {
        if open > 0 {
            parts.push(Part::Text(rest[..open].to_string()));
        }
        let at = offset + open;
        let after = &rest[open + 2..];
        let close = after.find("}}").ok_or(TemplateError::Unclosed {
            key: key.into(),
            at,
        })?;
        parts.push(placeholder(key, &after[..close], at)?);
        rest = &after[close + 2..];
        offset = at + 2 + close + 2;
    }
    if !rest.is_empty() {
        parts.push(Part::Text(rest.to_string()));
    }
    Ok(parts)
}

fn placeholder(key: &str, inner: &str, at: usize) -> Result<Part, TemplateError> {
    let mut pieces = inner.split('|').map(str::trim);
    let var = pieces.next().unwrap_or_default();
    if var.is_empty() {
        return Err(TemplateError::Empty {
            key: key.into(),
            at,
        });
    }
    if var == "refresh_token" {
        return Err(TemplateError::RefreshToken { key: key.into() });
    }
    let name =
        VARIABLES
            .iter()
            .find(|v| **v == var)
            .ok_or_else(|| TemplateError::UnknownVariable {
                key: key.into(),
                name: var.into(),
            })?;
    let filters = pieces
        .map(|f| match f {
            "json" => Ok(Filter::Json),
            "base64" => Ok(Filter::Base64),
            other => Err(TemplateError::UnknownFilter {
                key: key.into(),
                name: other.into(),
            }),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Part::Var { name, filters })
}

impl Templates {
    /// True when there is nothing to render.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Renders every template; `values` maps variable names to their values (a missing one
    /// renders empty, like an unknown division does).
    pub fn render(&self, values: &BTreeMap<&str, String>) -> BTreeMap<String, String> {
        self.keys
            .iter()
            .map(|(key, parts)| (key.clone(), render_parts(parts, values)))
            .collect()
    }
}

fn render_parts(parts: &[Part], values: &BTreeMap<&str, String>) -> String {
    let mut out = String::new();
    for part in parts {
        match part {
            Part::Text(t) => out.push_str(t),
            Part::Var { name, filters } => {
                let value = values.get(name).cloned().unwrap_or_default();
                out.push_str(&filters.iter().fold(value, |v, f| apply(*f, v)));
            }
        }
    }
    out
}

fn apply(filter: Filter, value: String) -> String {
    match filter {
        Filter::Json => serde_json::Value::String(value).to_string(),
        Filter::Base64 => base64::engine::general_purpose::STANDARD.encode(value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STANDARD: [&str; 5] = [
        "access_token",
        "token_type",
        "expires_at",
        "division",
        "api_base_url",
    ];

    fn one(key: &str, text: &str) -> Result<Templates, TemplateError> {
        parse_all(&BTreeMap::from([(key.into(), text.into())]), &STANDARD)
    }

    fn values() -> BTreeMap<&'static str, String> {
        BTreeMap::from([
            ("access_token", "stampNL001!a\"b".to_string()),
            ("token_type", "Bearer".to_string()),
            ("division", "42".to_string()),
            ("connection_name", "acme".to_string()),
        ])
    }

    #[test]
    fn renders_placeholders_and_filters() {
        let t = one(
            "config.json",
            "{\"token\": {{access_token|json}}, \"div\": {{ division }}, \"who\": \"{{ connection_name }}\"}",
        )
        .expect("valid");
        let out = t.render(&values());
        assert_eq!(
            out["config.json"],
            r#"{"token": "stampNL001!a\"b", "div": 42, "who": "acme"}"#
        );
        let header = one("Authorization", "{{ token_type }} {{ access_token }}").expect("valid");
        assert_eq!(
            header.render(&values())["Authorization"],
            "Bearer stampNL001!a\"b"
        );
        let b64 = one("basic", "{{ connection_name | base64 }}").expect("valid");
        assert_eq!(b64.render(&values())["basic"], "YWNtZQ==");
        // Only `{{` opens a placeholder: JSON braces and a lone `}}` are plain text.
        let plain = one("x", "{\"a\": {\"b\": 1}}").expect("valid");
        assert_eq!(plain.render(&values())["x"], "{\"a\": {\"b\": 1}}");
        // A value known to be absent renders empty.
        let absent = one("x", "[{{ expires_at }}]").expect("valid");
        assert_eq!(absent.render(&values())["x"], "[]");
    }

    #[test]
    fn rejects_bad_templates_with_the_key_named() {
        assert_eq!(
            one("k", "a {{ access_token"),
            Err(TemplateError::Unclosed {
                key: "k".into(),
                at: 2
            })
        );
        assert_eq!(
            one("k", "{{  }}"),
            Err(TemplateError::Empty {
                key: "k".into(),
                at: 0
            })
        );
        assert_eq!(
            one("k", "{{ accesstoken }}"),
            Err(TemplateError::UnknownVariable {
                key: "k".into(),
                name: "accesstoken".into()
            })
        );
        assert_eq!(
            one("k", "{{ env.HOME }}"),
            Err(TemplateError::UnknownVariable {
                key: "k".into(),
                name: "env.HOME".into()
            })
        );
        assert_eq!(
            one("k", "{{ access_token | upper }}"),
            Err(TemplateError::UnknownFilter {
                key: "k".into(),
                name: "upper".into()
            })
        );
        assert_eq!(
            one("k", "{{ refresh_token }}"),
            Err(TemplateError::RefreshToken { key: "k".into() })
        );
        let msg = one("k", "{{ nope }}").expect_err("bad").to_string();
        assert!(msg.contains("access_token, token_type"), "{msg}");
    }

    #[test]
    fn rejects_keys_that_clash_or_are_invalid() {
        for key in ["access_token", "api_base_url", "refresh_token"] {
            assert_eq!(
                one(key, "x"),
                Err(TemplateError::ShadowsStandardKey { key: key.into() })
            );
        }
        for key in [
            "",
            "a/b",
            "with space",
            ".",
            "..",
            "..data",
            ".exact-agent-tmp-x",
            &"k".repeat(254),
        ] {
            assert!(matches!(
                one(key, "x"),
                Err(TemplateError::InvalidKey { .. })
            ));
        }
        assert!(matches!(
            one("big", &"x".repeat(MAX_TEMPLATE_BYTES + 1)),
            Err(TemplateError::TooLarge { .. })
        ));
        assert_eq!(
            one("many", &"{{ access_token }}".repeat(MAX_PLACEHOLDERS + 1)),
            Err(TemplateError::TooManyPlaceholders)
        );
        assert!(one("many", &"{{ access_token }}".repeat(MAX_PLACEHOLDERS)).is_ok());
        assert!(parse_all(&BTreeMap::new(), &STANDARD)
            .expect("empty")
            .is_empty());
    }
}
