//! Exact's REST API: `GET /api/v1/current/Me`, `hrm/Divisions`, `system/Divisions` and
//! a paged `crm/Accounts`, with the bearer check, division access and Exact's
//! rate-limit headers and 429s.

use crate::config::SimDivision;
use crate::limits::RateDecision;
use crate::odata::{self, Entity, Prop, Select};
use crate::state::{lock, Shared, State, UserRec};
use crate::stats::Outcome;
use axum::extract::{Path, RawQuery, State as AxState};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use std::collections::HashMap;

/// Extracts the token from `Authorization: Bearer <token>`.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

fn wants_json(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.to_ascii_lowercase().contains("application/json"))
}

fn add_rate_headers(resp: &mut Response, d: &RateDecision) {
    let h = resp.headers_mut();
    let pairs = [
        ("X-RateLimit-Limit", u64::from(d.day_limit)),
        ("X-RateLimit-Remaining", u64::from(d.day_remaining)),
        ("X-RateLimit-Reset", d.day_reset_ms),
        ("X-RateLimit-Minutely-Limit", u64::from(d.minute_limit)),
        (
            "X-RateLimit-Minutely-Remaining",
            u64::from(d.minute_remaining),
        ),
        ("X-RateLimit-Minutely-Reset", d.minute_reset_ms),
    ];
    for (k, v) in pairs {
        h.insert(k, HeaderValue::from(v));
    }
}

/// The query string decoded (`%24select` and `$select` alike).
fn query_map(q: Option<String>) -> HashMap<String, String> {
    url::form_urlencoded::parse(q.unwrap_or_default().as_bytes())
        .into_owned()
        .collect()
}

/// A request that passed the bearer check, the division check and the rate limits.
pub(crate) struct Admitted {
    pub(crate) name: String,
    user: UserRec,
    pub(crate) division: i64,
    decision: RateDecision,
    /// `scheme://host` as the client addressed us, for `__metadata.uri` and `__next`.
    base: String,
}

/// Which division a REST call is about.
pub(crate) enum Division {
    /// The user's current division (`/current/Me`).
    Current,
    /// The `{division}` path segment, not yet parsed.
    Path(String),
}

/// The common gate of every REST call: live bearer token (401), numeric division the
/// user may open (400 / 403), then the per-client-and-division rate limits (429).
/// Every refusal is returned as a finished response.
pub(crate) fn admit(
    st: &mut State,
    headers: &HeaderMap,
    division: Division,
) -> Result<Admitted, Box<Response>> {
    let token = bearer(headers);
    let Some(idx) = token.and_then(|t| st.access_chain(t)) else {
        let name = token
            .and_then(|t| st.access_tokens.get(t))
            .and_then(|a| st.chain_name(a.chain));
        st.stats.record(name.as_deref(), Outcome::MeUnauthorized);
        tracing::info!(
            connection = name.as_deref().unwrap_or("-"),
            "REST: unauthorized"
        );
        return Err(Box::new(
            (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
            )
                .into_response(),
        ));
    };
    let (Some(chain), Some(user)) = (st.chains.get(idx).cloned(), st.chain_user(idx).cloned())
    else {
        return Err(Box::new(StatusCode::INTERNAL_SERVER_ERROR.into_response()));
    };
    let division = match division {
        Division::Current => user.current_division,
        Division::Path(raw) => match raw.parse::<i64>() {
            Ok(d) => d,
            Err(_) => {
                return Err(Box::new(odata::error(
                    StatusCode::BAD_REQUEST,
                    "The division in the URL is not a number.",
                )))
            }
        },
    };
    if user.division(division).is_none() {
        // Exact's exact status here is not documented; 403 says "authenticated, but
        // not for this company", which is what a client has to act on.
        st.stats
            .record(Some(&chain.name), Outcome::DivisionForbidden);
        tracing::info!(connection = %chain.name, division, "REST: division not accessible");
        return Err(Box::new(odata::error(StatusCode::FORBIDDEN, "Forbidden")));
    }
    let epoch_ms = st.clock.epoch_ms(st.now());
    let (per_min, per_day) = (st.cfg.rest_limit_per_minute, st.cfg.rest_limit_per_day);
    let decision = st
        .rate
        .check(&chain.client_id, division, epoch_ms, per_min, per_day);
    if !decision.allowed {
        st.stats.record(Some(&chain.name), Outcome::RateLimited);
        tracing::info!(connection = %chain.name, division, "REST: rate limited");
        let mut resp = StatusCode::TOO_MANY_REQUESTS.into_response();
        add_rate_headers(&mut resp, &decision);
        return Err(Box::new(resp));
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    let scheme = if st.cfg.tls { "https" } else { "http" };
    Ok(Admitted {
        name: chain.name,
        user,
        division,
        decision,
        base: format!("{scheme}://{host}"),
    })
}

async fn injected_latency(shared: &Shared) {
    let latency = lock(shared).faults.latency;
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
}

const ME_PROPS: [&str; 4] = ["CurrentDivision", "FullName", "UserID", "UserName"];

fn me_entity(base: &str, user: &UserRec) -> Entity {
    Entity {
        uri: format!("{base}/api/v1/current/Me(guid'{}')", user.user_id),
        type_name: "Exact.Web.Api.System.Me",
        props: vec![
            Prop::typed("CurrentDivision", json!(user.current_division), "Edm.Int32"),
            Prop::str("FullName", &user.full_name),
            Prop::typed("UserID", json!(user.user_id), "Edm.Guid"),
            Prop::str("UserName", &user.user_name),
        ],
    }
}

/// Renders a collection as JSON or Atom XML, with the rate-limit headers.
fn render(
    headers: &HeaderMap,
    a: &Admitted,
    feed_base: &str,
    title: &str,
    entities: &[Entity],
    select: &Select,
    next: Option<&str>,
) -> Response {
    let mut resp = if wants_json(headers) {
        odata::json_collection(entities, select, next)
    } else {
        odata::xml_feed(feed_base, title, entities, select, next)
    };
    add_rate_headers(&mut resp, &a.decision);
    resp
}

/// `GET /api/v1/current/Me`.
pub async fn me(
    AxState(shared): AxState<Shared>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    injected_latency(&shared).await;
    let query = query_map(q);
    let admitted = {
        let mut st = lock(&shared);
        let a = admit(&mut st, &headers, Division::Current);
        if let Ok(a) = &a {
            st.stats.record(Some(&a.name), Outcome::MeOk);
        }
        a
    };
    let a = match admitted {
        Ok(a) => a,
        Err(r) => return *r,
    };
    tracing::info!(connection = %a.name, "Me");
    let select = match Select::parse(query.get("$select").map(String::as_str), &ME_PROPS) {
        Ok(s) => s,
        Err(msg) => return with_rate(odata::error(StatusCode::BAD_REQUEST, &msg), &a),
    };
    let entity = me_entity(&a.base, &a.user);
    let feed_base = format!("{}/api/v1/current/", a.base);
    render(&headers, &a, &feed_base, "Me", &[entity], &select, None)
}

fn with_rate(mut r: Response, a: &Admitted) -> Response {
    add_rate_headers(&mut r, &a.decision);
    r
}

const DIVISION_PROPS: [&str; 11] = [
    "Code",
    "BlockingStatus",
    "Country",
    "Currency",
    "Current",
    "Customer",
    "CustomerName",
    "Description",
    "HID",
    "Main",
    "Status",
];

/// A deterministic GUID, so that the same division or account keeps its ID across
/// calls (clients page and cache by ID).
fn det_guid(a: u64, b: u64) -> String {
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        (a >> 32) as u32,
        (a >> 16) & 0xffff,
        a & 0xffff,
        (b >> 48) & 0xffff,
        b & 0xffff_ffff_ffff
    )
}

fn customer_guid(name: &str) -> String {
    // FNV-1a: a stable, dependency-free hash of the customer name.
    let h = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    det_guid(h, 0xc)
}

fn division_entity(
    base: &str,
    path_div: i64,
    user: &UserRec,
    d: &SimDivision,
    system: bool,
) -> Entity {
    let main = user.divisions.first().is_some_and(|m| m.code == d.code);
    let mut props = vec![
        Prop::typed("Code", json!(d.code), "Edm.Int32"),
        Prop::typed("BlockingStatus", json!(0), "Edm.Int32"),
        Prop::str("Country", "NL"),
        Prop::str("Currency", "EUR"),
    ];
    if system {
        // `Current` exists on system/Divisions only.
        props.push(Prop::typed(
            "Current",
            json!(d.code == user.current_division),
            "Edm.Boolean",
        ));
    }
    props.extend([
        Prop::typed(
            "Customer",
            json!(customer_guid(&d.customer_name)),
            "Edm.Guid",
        ),
        Prop::str("CustomerName", &d.customer_name),
        Prop::str("Description", &d.description),
        Prop::typed("HID", json!(d.code), "Edm.Int64"),
        Prop::typed("Main", json!(main), "Edm.Boolean"),
        Prop::typed("Status", json!(1), "Edm.Int16"),
    ]);
    let (service, ty) = if system {
        ("system", "Exact.Web.Api.Models.System.Division")
    } else {
        ("hrm", "Exact.Web.Api.Models.HRM.Division")
    };
    Entity {
        uri: format!("{base}/api/v1/{path_div}/{service}/Divisions({})", d.code),
        type_name: ty,
        props,
    }
}

async fn divisions(
    shared: Shared,
    headers: HeaderMap,
    division: String,
    q: Option<String>,
    system: bool,
) -> Response {
    injected_latency(&shared).await;
    let query = query_map(q);
    let admitted = {
        let mut st = lock(&shared);
        let a = admit(&mut st, &headers, Division::Path(division));
        if let Ok(a) = &a {
            st.stats.record(Some(&a.name), Outcome::RestOk);
        }
        a
    };
    let a = match admitted {
        Ok(a) => a,
        Err(r) => return *r,
    };
    let service = if system { "system" } else { "hrm" };
    tracing::info!(connection = %a.name, division = a.division, service, "Divisions");
    let known: Vec<&str> = DIVISION_PROPS
        .iter()
        .copied()
        .filter(|p| system || *p != "Current")
        .collect();
    let select = match Select::parse(query.get("$select").map(String::as_str), &known) {
        Ok(s) => s,
        Err(msg) => return with_rate(odata::error(StatusCode::BAD_REQUEST, &msg), &a),
    };
    // Both list the divisions the user may open; the simulator has no divisions
    // outside a user's access (those would only show in system/AllDivisions).
    let entities: Vec<Entity> = a
        .user
        .divisions
        .iter()
        .map(|d| division_entity(&a.base, a.division, &a.user, d, system))
        .collect();
    let feed_base = format!("{}/api/v1/{}/{service}/", a.base, a.division);
    render(
        &headers,
        &a,
        &feed_base,
        "Divisions",
        &entities,
        &select,
        None,
    )
}

/// `GET /api/v1/{division}/hrm/Divisions`.
pub async fn hrm_divisions(
    AxState(shared): AxState<Shared>,
    Path(division): Path<String>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    divisions(shared, headers, division, q, false).await
}

/// `GET /api/v1/{division}/system/Divisions`.
pub async fn system_divisions(
    AxState(shared): AxState<Shared>,
    Path(division): Path<String>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    divisions(shared, headers, division, q, true).await
}

const ACCOUNT_PROPS: [&str; 9] = [
    "ID",
    "Code",
    "City",
    "Country",
    "Division",
    "Email",
    "IsSupplier",
    "Name",
    "Status",
];

/// Account `i` (1-based) of division `d`; its ID sorts in `i` order, which is what
/// `$skiptoken` paging relies on.
fn account_id(d: i64, i: u64) -> String {
    det_guid(d as u64, i)
}

fn account_entity(base: &str, d: &SimDivision, i: u64) -> Entity {
    let id = account_id(d.code, i);
    const CITIES: [&str; 4] = ["Amsterdam", "Delft", "Utrecht", "Zwolle"];
    Entity {
        uri: format!("{base}/api/v1/{}/crm/Accounts(guid'{id}')", d.code),
        type_name: "Exact.Web.Api.Models.Account",
        props: vec![
            Prop::typed("ID", json!(id), "Edm.Guid"),
            // Exact right-aligns account codes in 18 characters.
            Prop::str("Code", format!("{i:>18}")),
            Prop::str("City", CITIES[(i % 4) as usize]),
            Prop::str("Country", "NL"),
            Prop::typed("Division", json!(d.code), "Edm.Int32"),
            Prop::str(
                "Email",
                format!("account{i}@division{}.example.invalid", d.code),
            ),
            Prop::typed("IsSupplier", json!(i.is_multiple_of(5)), "Edm.Boolean"),
            Prop::str("Name", format!("{} account {i}", d.description)),
            Prop::str("Status", "C"),
        ],
    }
}

/// Parses `$skiptoken=guid'…'` of this division into the index of the last account
/// already returned.
fn parse_skiptoken(raw: &str, division: i64) -> Option<u64> {
    let guid = raw.trim().strip_prefix("guid'")?.strip_suffix('\'')?;
    let last = guid.rsplit('-').next()?;
    let i = u64::from_str_radix(last, 16).ok()?;
    (account_id(division, i) == guid).then_some(i)
}

/// `GET /api/v1/{division}/crm/Accounts`: server-driven paging (`__next` with
/// `$skiptoken`), `$top` and `$select`.
pub async fn accounts(
    AxState(shared): AxState<Shared>,
    Path(division): Path<String>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    injected_latency(&shared).await;
    let query = query_map(q);
    let (admitted, default_count, page_size) = {
        let mut st = lock(&shared);
        let a = admit(&mut st, &headers, Division::Path(division));
        if let Ok(a) = &a {
            st.stats.record(Some(&a.name), Outcome::RestOk);
        }
        (a, st.cfg.accounts_per_division, st.cfg.page_size.max(1))
    };
    let a = match admitted {
        Ok(a) => a,
        Err(r) => return *r,
    };
    let bad = |msg: &str| with_rate(odata::error(StatusCode::BAD_REQUEST, msg), &a);
    let select = match Select::parse(query.get("$select").map(String::as_str), &ACCOUNT_PROPS) {
        Ok(s) => s,
        Err(msg) => return bad(&msg),
    };
    let top = match query.get("$top").map(|t| t.trim().parse::<u64>()) {
        None => None,
        Some(Ok(t)) => Some(t),
        Some(Err(_)) => return bad("$top must be a non-negative integer."),
    };
    let after = match query.get("$skiptoken") {
        None => 0,
        Some(t) => match parse_skiptoken(t, a.division) {
            Some(i) => i,
            None => return bad("Invalid $skiptoken."),
        },
    };
    let Some(div) = a.user.division(a.division).cloned() else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let total = u64::from(div.accounts.unwrap_or(default_count));
    let left = total.saturating_sub(after);
    let take = left.min(u64::from(page_size)).min(top.unwrap_or(u64::MAX));
    let entities: Vec<Entity> = (after + 1..=after + take)
        .map(|i| account_entity(&a.base, &div, i))
        .collect();
    // OData: `$top` bounds the whole result, so a next link carries what is left of it.
    let top_left = top.map(|t| t - take);
    let more = take < left && top_left != Some(0);
    let next = more.then(|| {
        let mut url = format!("{}/api/v1/{}/crm/Accounts?", a.base, a.division);
        if let Some(s) = select.query_value() {
            url.push_str(&format!("$select={s}&"));
        }
        if let Some(t) = top_left {
            url.push_str(&format!("$top={t}&"));
        }
        url.push_str(&format!(
            "$skiptoken=guid'{}'",
            account_id(a.division, after + take)
        ));
        url
    });
    tracing::info!(connection = %a.name, division = a.division, count = take, "Accounts");
    let feed_base = format!("{}/api/v1/{}/crm/", a.base, a.division);
    render(
        &headers,
        &a,
        &feed_base,
        "Accounts",
        &entities,
        &select,
        next.as_deref(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_ids_sort_by_index_and_skiptokens_round_trip() {
        let a = account_id(123_456, 9);
        let b = account_id(123_456, 10);
        assert!(a < b);
        assert_eq!(parse_skiptoken(&format!("guid'{b}'"), 123_456), Some(10));
        assert_eq!(
            parse_skiptoken(&format!("guid'{b}'"), 7),
            None,
            "other division"
        );
        assert_eq!(parse_skiptoken("guid'nope'", 123_456), None);
        assert_eq!(parse_skiptoken(&b, 123_456), None, "needs guid'…'");
    }

    #[test]
    fn negative_division_codes_still_give_guids() {
        assert_eq!(account_id(-1, 1).len(), 36);
    }
}
