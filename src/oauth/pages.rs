//! Plain HTML pages shown at the end of the OAuth flow. They name the connection and never
//! show a token or code.

use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};

/// Escapes text for HTML.
pub fn escape(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '<' => "&lt;".to_string(),
            '>' => "&gt;".to_string(),
            '&' => "&amp;".to_string(),
            '"' => "&quot;".to_string(),
            '\'' => "&#39;".to_string(),
            c => c.to_string(),
        })
        .collect()
}

fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{t}</title>\
         <style>body{{font-family:sans-serif;max-width:40em;margin:4em auto}}</style></head>\
         <body><h1>{t}</h1><p>{b}</p></body></html>",
        t = escape(title),
        b = body
    );
    (status, Html(html)).into_response()
}

/// Success page.
pub fn success(ns: &str, name: &str) -> Response {
    page(
        StatusCode::OK,
        "Exact Online connected",
        &format!(
            "Connection <b>{}/{}</b> is authorized. The operator now keeps its access token fresh; you can close this window.",
            escape(ns),
            escape(name)
        ),
    )
}

/// Failure page; `what` is plain text.
pub fn failure(status: StatusCode, connection: Option<(&str, &str)>, what: &str) -> Response {
    let who = connection
        .map(|(ns, n)| format!("Connection <b>{}/{}</b>: ", escape(ns), escape(n)))
        .unwrap_or_default();
    page(
        status,
        "Exact Online authorization failed",
        &format!("{who}{}", escape(what)),
    )
}

#[cfg(test)]
mod tests {
    use super::escape;

    #[test]
    fn escapes_markup() {
        assert_eq!(
            escape("<a href='x'>&\"</a>"),
            "&lt;a href=&#39;x&#39;&gt;&amp;&quot;&lt;/a&gt;"
        );
    }
}
