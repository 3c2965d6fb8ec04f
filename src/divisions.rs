//! The divisions (companies) one consent serves: discovered with the connection's current
//! access token via `/api/v1/{division}/hrm/Divisions` (a REST call, never a token call),
//! re-discovered hourly and on `kubectl exact refresh`, and published in the workload
//! Secret's `divisions` key. The choice of what to publish is pure (tested below).

use crate::cache::Discovered;
use crate::context::Context;
use crate::crd::{DivisionInfo, ExactConnection, ExactConnectionSpec, REFRESH_REQUEST_ANNOTATION};
use crate::events::event;
use crate::resolve::Resolved;
use crate::state::ConnectionState;
use crate::token::REQUEST_TIMEOUT;
use jiff::{SignedDuration, Timestamp};
use kube::runtime::events::EventType;
use kube::ResourceExt;
use secrecy::{ExposeSecret, SecretString};

/// How often the divisions a user may open are asked again.
pub const REDISCOVER_EVERY: SignedDuration = SignedDuration::from_hours(1);
/// How soon a failed discovery is tried again.
pub const RETRY_FAILED_AFTER: SignedDuration = SignedDuration::from_mins(5);
/// Pages of `hrm/Divisions` followed at most (Exact pages by 60).
const MAX_PAGES: usize = 20;
/// Largest answer page read.
const MAX_BODY: usize = 2 * 1024 * 1024;

/// Whether the spec asks for more than the primary division.
pub fn wanted(spec: &ExactConnectionSpec) -> bool {
    spec.all_divisions || !spec.divisions.is_empty()
}

/// What of the discovered divisions is published, and which requested codes the user may
/// not open.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selection {
    /// Published in the `divisions` key, in spec order (all: discovery order).
    pub published: Vec<DivisionInfo>,
    /// Requested (spec.divisions or spec.division) but not among the user's divisions.
    pub missing: Vec<i64>,
}

/// Picks the published divisions from the discovered ones. Pure.
pub fn select(spec: &ExactConnectionSpec, discovered: &[DivisionInfo]) -> Selection {
    let known = |code: i64| discovered.iter().find(|d| d.division == code);
    let mut out = Selection::default();
    if spec.all_divisions {
        out.published = discovered.to_vec();
    } else {
        for code in &spec.divisions {
            match known(*code) {
                Some(d) if !out.published.contains(d) => out.published.push(d.clone()),
                Some(_) => {}
                None if !out.missing.contains(code) => out.missing.push(*code),
                None => {}
            }
        }
    }
    if let Some(primary) = spec.division.filter(|p| known(*p).is_none()) {
        if !out.missing.contains(&primary) {
            out.missing.push(primary);
        }
    }
    out
}

/// Whether the divisions should be asked now. Pure.
pub fn due(last: Option<&Discovered>, request: Option<&str>, now: Timestamp) -> bool {
    let Some(last) = last else {
        return true;
    };
    if request.is_some() && request != last.request.as_deref() {
        return true;
    }
    let every = if last.error.is_some() {
        RETRY_FAILED_AFTER
    } else {
        REDISCOVER_EVERY
    };
    now.duration_since(last.at) >= every
}

/// The `divisions` key: a JSON array of {division, name, api_base_url}. Pure.
pub fn workload_json(published: &[DivisionInfo], api_base_url: &str) -> String {
    let items: Vec<serde_json::Value> = published
        .iter()
        .map(|d| {
            serde_json::json!({
                "division": d.division,
                "name": d.name,
                "api_base_url": format!("{api_base_url}/v1/{}", d.division),
            })
        })
        .collect();
    serde_json::Value::Array(items).to_string()
}

/// Parses one `hrm/Divisions` page: its divisions and the `__next` link. Pure.
pub fn parse_page(body: &[u8]) -> Result<(Vec<DivisionInfo>, Option<String>), String> {
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|_| "Divisions answer is not JSON".to_string())?;
    let results = v
        .pointer("/d/results")
        .and_then(|r| r.as_array())
        .ok_or_else(|| "Divisions answer has no d.results".to_string())?;
    let divisions = results
        .iter()
        .filter_map(|d| {
            let code = d.get("Code")?;
            let division = code
                .as_i64()
                .or_else(|| code.as_str().and_then(|s| s.parse().ok()))?;
            let name = d
                .get("Description")
                .and_then(|x| x.as_str())
                .map(|s| s.chars().take(200).collect());
            Some(DivisionInfo { division, name })
        })
        .collect();
    let next = v
        .pointer("/d/__next")
        .and_then(|n| n.as_str())
        .map(str::to_string);
    Ok((divisions, next))
}

/// Asks Exact which divisions the token's user may open (following `__next` pages).
pub async fn discover(
    http: &reqwest::Client,
    api_base_url: &str,
    division: i64,
    token: &SecretString,
) -> Result<Vec<DivisionInfo>, String> {
    let mut url = format!("{api_base_url}/v1/{division}/hrm/Divisions?$select=Code,Description");
    let mut all = Vec::new();
    for _ in 0..MAX_PAGES {
        let resp = http
            .get(&url)
            .bearer_auth(token.expose_secret())
            .header(reqwest::header::ACCEPT, "application/json")
            .timeout(REQUEST_TIMEOUT)
            .send()
            .await
            .map_err(|_| "Divisions request failed".to_string())?;
        let status = resp.status();
        if !status.is_success() {
            return Err(format!("Divisions request answered {}", status.as_u16()));
        }
        let body = resp
            .bytes()
            .await
            .map_err(|_| "Divisions answer was cut off".to_string())?;
        if body.len() > MAX_BODY {
            return Err("oversized Divisions answer".into());
        }
        let (page, next) = parse_page(&body)?;
        all.extend(page);
        match next {
            Some(n) if n.starts_with(api_base_url) => url = n,
            Some(_) => return Err("Divisions __next points elsewhere".into()),
            None => return Ok(all),
        }
    }
    Err(format!("more than {MAX_PAGES} pages of Divisions"))
}

/// The divisions known for `conn`: discovered by this process, else what its status shows
/// (after a restart), so a restored workload Secret keeps its `divisions` key.
pub fn known(ctx: &Context, conn: &ExactConnection) -> Option<Discovered> {
    let uid = conn.uid().unwrap_or_default();
    ctx.caches.divisions(&uid).or_else(|| {
        let status = conn.status.as_ref()?;
        Some(Discovered {
            at: status.divisions_discovered_at?,
            divisions: status.divisions.clone(),
            request: status.handled_refresh_request.clone(),
            error: None,
        })
    })
}

/// Discovers the divisions when the spec wants them and they are due, with the state's
/// access token (skipped while it has none). A failure keeps what was known.
pub async fn ensure(ctx: &Context, conn: &ExactConnection, r: &Resolved, state: &ConnectionState) {
    let now = Timestamp::now();
    let request = conn.annotations().get(REFRESH_REQUEST_ANNOTATION).cloned();
    // What the status shows (after a restart) is published meanwhile, but asked again.
    let uid = conn.uid().unwrap_or_default();
    let asked = ctx.caches.divisions(&uid);
    if !wanted(&conn.spec) || !due(asked.as_ref(), request.as_deref(), now) {
        return;
    }
    let (Some(token), Some(division), true) = (
        state.access_token.as_ref(),
        conn.spec.division.or(state.division),
        state.access_token_valid(now),
    ) else {
        return;
    };
    let found = discover(&r.http, &r.settings.api_base_url, division, token).await;
    let last = asked.or_else(|| known(ctx, conn));
    let next = match found {
        Ok(divisions) => Discovered {
            at: now,
            divisions,
            request,
            error: None,
        },
        Err(e) => {
            let note = format!("the user's divisions could not be listed ({e}); the last known ones stay published");
            event(
                ctx,
                conn,
                EventType::Warning,
                "DivisionDiscoveryFailed",
                note,
            )
            .await;
            Discovered {
                at: now,
                divisions: last.map(|l| l.divisions).unwrap_or_default(),
                request,
                error: Some(e),
            }
        }
    };
    ctx.caches.remember_divisions(&uid, next);
}

/// The `divisions` key's value for `conn`, when its spec asks for divisions and some are
/// known.
pub fn workload_value(ctx: &Context, conn: &ExactConnection, api_base_url: &str) -> Option<String> {
    if !wanted(&conn.spec) {
        return None;
    }
    let known = known(ctx, conn)?;
    Some(workload_json(
        &select(&conn.spec, &known.divisions).published,
        api_base_url,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{ClientRef, TargetSecret};

    fn spec(division: Option<i64>, divisions: Vec<i64>, all: bool) -> ExactConnectionSpec {
        ExactConnectionSpec {
            client_ref: ClientRef {
                name: "app".into(),
                namespace: None,
            },
            refresh_token_secret_ref: None,
            division,
            target: TargetSecret::default(),
            refresh_before: None,
            suspend: false,
            divisions,
            all_divisions: all,
        }
    }

    fn div(code: i64, name: &str) -> DivisionInfo {
        DivisionInfo {
            division: code,
            name: Some(name.into()),
        }
    }

    #[test]
    fn listed_codes_are_published_and_unknown_ones_reported() {
        let found = vec![div(100, "Holding"), div(200, "Retail")];
        let s = select(&spec(None, vec![200, 300, 200], false), &found);
        assert_eq!(s.published, vec![div(200, "Retail")]);
        assert_eq!(s.missing, vec![300]);
        let all = select(&spec(Some(100), vec![300], true), &found);
        assert_eq!(
            all.published, found,
            "all: every division, spec.divisions ignored"
        );
        assert!(all.missing.is_empty());
        let bad_primary = select(&spec(Some(999), vec![100], false), &found);
        assert_eq!(bad_primary.missing, vec![999]);
        assert!(!wanted(&spec(Some(1), vec![], false)));
    }

    #[test]
    fn rediscovery_is_hourly_sooner_after_a_failure_and_on_request() {
        let t0 = Timestamp::from_second(1_800_000_000).expect("valid");
        let ok = Discovered {
            at: t0,
            divisions: vec![],
            request: Some("r1".into()),
            error: None,
        };
        assert!(due(None, None, t0));
        assert!(!due(
            Some(&ok),
            Some("r1"),
            t0 + SignedDuration::from_mins(59)
        ));
        assert!(due(
            Some(&ok),
            Some("r1"),
            t0 + SignedDuration::from_mins(60)
        ));
        assert!(due(Some(&ok), Some("r2"), t0), "a new refresh request");
        let failed = Discovered {
            error: Some("x".into()),
            ..ok
        };
        assert!(!due(
            Some(&failed),
            Some("r1"),
            t0 + SignedDuration::from_mins(4)
        ));
        assert!(due(
            Some(&failed),
            Some("r1"),
            t0 + SignedDuration::from_mins(5)
        ));
    }

    #[test]
    fn pages_parse_and_the_key_carries_one_api_base_per_division() {
        let body = br#"{"d":{"results":[{"Code":100,"Description":"Holding"},{"Code":"200"},{"x":1}],"__next":"https://h/api/v1/1/hrm/Divisions?$skiptoken=2"}}"#;
        let (page, next) = parse_page(body).expect("parses");
        assert_eq!(
            page,
            vec![
                div(100, "Holding"),
                DivisionInfo {
                    division: 200,
                    name: None
                }
            ]
        );
        assert!(next.is_some_and(|n| n.contains("skiptoken")));
        assert!(parse_page(b"<html>").is_err());
        let json = workload_json(&[div(100, "Holding")], "https://h/api");
        let v: serde_json::Value = serde_json::from_str(&json).expect("json");
        assert_eq!(v[0]["division"], 100);
        assert_eq!(v[0]["name"], "Holding");
        assert_eq!(v[0]["api_base_url"], "https://h/api/v1/100");
    }
}
