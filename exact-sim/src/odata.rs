//! Just enough OData v2 for Exact's REST answers: `$select`, verbose JSON
//! (`{"d":{"results":[...],"__next":...}}`) and the Atom XML Exact sends without
//! `Accept: application/json`.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};

/// One property of an entity, with its EDM type for the XML form (`None`: Edm.String).
pub struct Prop {
    /// Property name (case-sensitive, as in Exact's metadata).
    pub name: &'static str,
    /// JSON value.
    pub value: Value,
    /// `m:type` in XML, e.g. `Edm.Int32`; `None` for strings.
    pub edm: Option<&'static str>,
}

impl Prop {
    /// A string property.
    pub fn str(name: &'static str, v: impl Into<String>) -> Self {
        Self {
            name,
            value: Value::String(v.into()),
            edm: None,
        }
    }

    /// A typed property.
    pub fn typed(name: &'static str, value: Value, edm: &'static str) -> Self {
        Self {
            name,
            value,
            edm: Some(edm),
        }
    }
}

/// An entity of a collection.
pub struct Entity {
    /// Absolute URI of the entity (`__metadata.uri`, Atom `<id>`).
    pub uri: String,
    /// EDM type name, e.g. `Exact.Web.Api.Models.Account`.
    pub type_name: &'static str,
    /// Its properties in Exact's order.
    pub props: Vec<Prop>,
}

/// The properties asked for by `$select`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Select {
    /// No `$select` (or `*`): every property.
    All,
    /// Only these properties (validated against the entity's property names).
    Only(Vec<String>),
}

impl Select {
    /// Parses `$select` against the known property names. An unknown property is an
    /// error, as in OData (and it catches typos in tests).
    pub fn parse(raw: Option<&str>, known: &[&str]) -> Result<Select, String> {
        let Some(raw) = raw.map(str::trim).filter(|r| !r.is_empty() && *r != "*") else {
            return Ok(Select::All);
        };
        let mut out = Vec::new();
        for name in raw.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if !known.contains(&name) {
                return Err(format!("Property '{name}' does not exist."));
            }
            if !out.iter().any(|o| o == name) {
                out.push(name.to_string());
            }
        }
        if out.is_empty() {
            return Ok(Select::All);
        }
        Ok(Select::Only(out))
    }

    fn keeps(&self, name: &str) -> bool {
        match self {
            Select::All => true,
            Select::Only(names) => names.iter().any(|n| n == name),
        }
    }

    /// The value to repeat in a `__next` link (`None` for all properties).
    pub fn query_value(&self) -> Option<String> {
        match self {
            Select::All => None,
            Select::Only(names) => Some(names.join(",")),
        }
    }
}

/// An OData error answer, shaped like Exact's.
pub fn error(status: StatusCode, message: &str) -> Response {
    let body = json!({"error": {"code": "", "message": {"lang": "", "value": message}}});
    (status, axum::Json(body)).into_response()
}

/// Verbose JSON: `{"d":{"results":[...]}}` plus `"__next"` when there is a next page.
/// Selected properties only, plus OData's `__metadata`, which OData v2 always sends.
pub fn json_collection(entities: &[Entity], select: &Select, next: Option<&str>) -> Response {
    let results: Vec<Value> = entities
        .iter()
        .map(|e| {
            let mut m = Map::new();
            m.insert(
                "__metadata".into(),
                json!({"uri": e.uri, "type": e.type_name}),
            );
            for p in e.props.iter().filter(|p| select.keeps(p.name)) {
                m.insert(p.name.into(), p.value.clone());
            }
            Value::Object(m)
        })
        .collect();
    let mut d = Map::new();
    d.insert("results".into(), Value::Array(results));
    if let Some(n) = next {
        d.insert("__next".into(), Value::String(n.to_string()));
    }
    axum::Json(json!({ "d": Value::Object(d) })).into_response()
}

/// Atom XML feed. `base` is the `xml:base` (ends with `/`), `title` the collection name.
pub fn xml_feed(
    base: &str,
    title: &str,
    entities: &[Entity],
    select: &Select,
    next: Option<&str>,
) -> Response {
    let base_x = xml_escape(base);
    let mut xml = format!(
        r#"<?xml version="1.0" encoding="utf-8"?><feed xml:base="{base_x}" xmlns="http://www.w3.org/2005/Atom" xmlns:d="http://schemas.microsoft.com/ado/2007/08/dataservices" xmlns:m="http://schemas.microsoft.com/ado/2007/08/dataservices/metadata"><title type="text">{title}</title><id>{base_x}{title}</id><link rel="self" title="{title}" href="{title}" />"#
    );
    for e in entities {
        xml.push_str(&format!(
            r#"<entry><id>{}</id><title type="text"></title><author><name /></author><category term="{}" scheme="http://schemas.microsoft.com/ado/2007/08/dataservices/scheme" /><content type="application/xml"><m:properties>"#,
            xml_escape(&e.uri),
            e.type_name
        ));
        for p in e.props.iter().filter(|p| select.keeps(p.name)) {
            xml.push_str(&xml_prop(p));
        }
        xml.push_str("</m:properties></content></entry>");
    }
    if let Some(n) = next {
        xml.push_str(&format!(r#"<link rel="next" href="{}" />"#, xml_escape(n)));
    }
    xml.push_str("</feed>");
    (
        [(
            header::CONTENT_TYPE,
            "application/atom+xml;type=feed;charset=utf-8",
        )],
        xml,
    )
        .into_response()
}

fn xml_prop(p: &Prop) -> String {
    let ty = p
        .edm
        .map(|t| format!(r#" m:type="{t}""#))
        .unwrap_or_default();
    let text = match &p.value {
        Value::Null => return format!(r#"<d:{}{ty} m:null="true" />"#, p.name),
        Value::String(s) => xml_escape(s),
        other => other.to_string(),
    };
    format!("<d:{n}{ty}>{text}</d:{n}>", n = p.name)
}

/// Escapes text for XML content and attribute values.
pub fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn select_parses_validates_and_dedups() {
        let known = ["A", "B", "C"];
        assert_eq!(Select::parse(None, &known), Ok(Select::All));
        assert_eq!(Select::parse(Some("*"), &known), Ok(Select::All));
        assert_eq!(Select::parse(Some(" , "), &known), Ok(Select::All));
        assert_eq!(
            Select::parse(Some("B, A,B"), &known),
            Ok(Select::Only(vec!["B".into(), "A".into()]))
        );
        assert!(Select::parse(Some("a"), &known).is_err(), "case-sensitive");
        assert!(Select::parse(Some("A,Nope"), &known).is_err());
    }

    #[test]
    fn xml_props_are_typed_and_escaped() {
        assert_eq!(
            xml_prop(&Prop::typed("N", json!(5), "Edm.Int32")),
            r#"<d:N m:type="Edm.Int32">5</d:N>"#
        );
        assert_eq!(xml_prop(&Prop::str("S", "a<&")), "<d:S>a&lt;&amp;</d:S>");
        assert_eq!(
            xml_prop(&Prop::typed("X", Value::Null, "Edm.Guid")),
            r#"<d:X m:type="Edm.Guid" m:null="true" />"#
        );
    }
}
