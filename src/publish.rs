//! The workload-facing Secret: access token, type, expiry, division and API base. It never
//! holds the refresh token. It is restored from state when edited or deleted, with no
//! token call.

use crate::secrets::{managed_labels, owned_by, same_data};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::ByteString;
use kube::api::{Api, PostParams};
use secrecy::{ExposeSecret, SecretString};
use std::collections::BTreeMap;

/// Keys of the workload Secret, in the order documented in the README.
pub const KEYS: [&str; 5] = [
    "access_token",
    "token_type",
    "expires_at",
    "division",
    "api_base_url",
];

/// Keys the operator writes besides the standard ones; templates may not use these either.
pub const OPERATOR_KEYS: [&str; 6] = [
    "access_token",
    "token_type",
    "expires_at",
    "division",
    "api_base_url",
    "divisions",
];

/// What workloads get.
pub struct WorkloadToken<'a> {
    /// The access token.
    pub access_token: &'a SecretString,
    /// Its expiry.
    pub expires_at: Timestamp,
    /// The division, when known.
    pub division: Option<i64>,
    /// REST base of the client (e.g. https://start.exactonline.nl/api).
    pub api_base_url: &'a str,
    /// The `divisions` key (JSON array), when the connection serves several divisions.
    pub divisions: Option<String>,
}

/// Builds the workload Secret's data.
pub fn workload_data(t: &WorkloadToken<'_>) -> BTreeMap<String, ByteString> {
    let division = t.division.map(|d| d.to_string()).unwrap_or_default();
    let api = match t.division {
        Some(d) => format!("{}/v1/{d}", t.api_base_url),
        None => format!("{}/v1", t.api_base_url),
    };
    let values = [
        t.access_token.expose_secret().to_string(),
        "Bearer".to_string(),
        t.expires_at.to_string(),
        division,
        api,
    ];
    let mut data: BTreeMap<String, ByteString> = KEYS
        .iter()
        .zip(values)
        .map(|(k, v)| (k.to_string(), ByteString(v.into_bytes())))
        .collect();
    if let Some(divisions) = &t.divisions {
        data.insert(
            "divisions".into(),
            ByteString(divisions.clone().into_bytes()),
        );
    }
    data
}

/// Adds the keys rendered from `spec.target.template` to the standard `data`. The
/// variables are the standard keys' values plus the connection's name and namespace: what
/// the workload sees anyway, never the refresh token. Keys already in `data` are kept as the
/// operator wrote them (`parse_all` refuses such templates in the first place).
pub fn add_templated(
    data: &mut BTreeMap<String, ByteString>,
    templates: &crate::template::Templates,
    connection_name: &str,
    connection_namespace: &str,
) {
    if templates.is_empty() {
        return;
    }
    let mut values: BTreeMap<&str, String> = crate::template::VARIABLES
        .iter()
        .filter_map(|v| {
            let bytes = &data.get(*v)?.0;
            Some((*v, String::from_utf8_lossy(bytes).into_owned()))
        })
        .collect();
    values.insert("connection_name", connection_name.to_string());
    values.insert("connection_namespace", connection_namespace.to_string());
    for (key, value) in templates.render(&values) {
        data.entry(key)
            .or_insert_with(|| ByteString(value.into_bytes()));
    }
}

/// Outcome of publishing.
#[derive(Debug, PartialEq, Eq)]
pub enum Published {
    /// Created or rewritten (at this resourceVersion).
    Written(Option<String>),
    /// Already up to date: no write.
    Unchanged,
    /// A Secret of that name exists and is not ours: left alone.
    Conflict,
}

/// Desired metadata of the workload Secret.
pub struct Target<'a> {
    /// Secret name.
    pub name: &'a str,
    /// Owning connection's name.
    pub connection: &'a str,
    /// Owner reference to the connection.
    pub owner: &'a OwnerReference,
    /// Extra labels from the spec.
    pub labels: &'a BTreeMap<String, String>,
    /// Extra annotations from the spec.
    pub annotations: &'a BTreeMap<String, String>,
}

/// Creates or updates the workload Secret if it differs; never touches a foreign Secret.
/// `cached` is the Secret as the managed-Secret watch shows it (Some(None): not there); a
/// foreign Secret is not in that watch, so a refused create reads the Secret to tell.
pub async fn publish(
    api: &Api<Secret>,
    target: &Target<'_>,
    data: BTreeMap<String, ByteString>,
    cached: Option<Option<Secret>>,
) -> Result<Published, kube::Error> {
    let existing = match cached {
        Some(found) => found,
        None => api.get_opt(target.name).await?,
    };
    match write_if_changed(api, target, data.clone(), existing).await {
        Err(e) if crate::secrets::is_conflict(&e) => {
            let existing = api.get_opt(target.name).await?;
            write_if_changed(api, target, data, existing).await
        }
        done => done,
    }
}

async fn write_if_changed(
    api: &Api<Secret>,
    target: &Target<'_>,
    data: BTreeMap<String, ByteString>,
    existing: Option<Secret>,
) -> Result<Published, kube::Error> {
    let mut labels = target.labels.clone();
    labels.extend(managed_labels(target.connection, "token"));
    let annotations = target.annotations.clone();
    if let Some(current) = &existing {
        if !owned_by(current, &target.owner.uid) {
            return Ok(Published::Conflict);
        }
        let meta_same = current
            .metadata
            .labels
            .as_ref()
            .is_some_and(|l| labels.iter().all(|(k, v)| l.get(k) == Some(v)))
            && annotations.iter().all(|(k, v)| {
                current.metadata.annotations.as_ref().and_then(|a| a.get(k)) == Some(v)
            });
        if meta_same && same_data(current.data.as_ref(), &data) {
            return Ok(Published::Unchanged);
        }
    }
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(target.name.to_string()),
            resource_version: existing
                .as_ref()
                .and_then(|s| s.metadata.resource_version.clone()),
            labels: Some(labels),
            annotations: (!annotations.is_empty()).then_some(annotations),
            owner_references: Some(vec![target.owner.clone()]),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        data: Some(data),
        ..Default::default()
    };
    let written = match existing {
        Some(_) => {
            api.replace(target.name, &PostParams::default(), &secret)
                .await?
        }
        None => api.create(&PostParams::default(), &secret).await?,
    };
    Ok(Published::Written(written.metadata.resource_version))
}

/// Publishes the state's access token into the connection's workload Secret (a no-op when
/// it already shows it, a restore when it was edited or deleted; never a token call).
pub async fn publish_from_state(
    ctx: &crate::context::Context,
    conn: &crate::crd::ExactConnection,
    r: &crate::resolve::Resolved,
    state: &crate::state::ConnectionState,
) -> Result<Published, kube::Error> {
    use kube::{Resource, ResourceExt};
    let (Some(token), Some(expires_at), Some(owner)) = (
        &state.access_token,
        state.times.access_token_expires_at,
        conn.controller_owner_ref(&()),
    ) else {
        return Ok(Published::Unchanged);
    };
    let mut data = workload_data(&WorkloadToken {
        access_token: token,
        expires_at,
        division: conn.spec.division.or(state.division),
        api_base_url: &r.settings.api_base_url,
        divisions: crate::divisions::workload_value(ctx, conn, &r.settings.api_base_url),
    });
    let name = conn.name_any();
    let namespace = conn.namespace().unwrap_or_default();
    // A bad template leaves the last good Secret as it is (load() reports it before any
    // token call; this guards the paths that publish without going through load()).
    let Ok(templates) = crate::template::parse_all(&conn.spec.target.template, &OPERATOR_KEYS)
    else {
        return Ok(Published::Unchanged);
    };
    add_templated(&mut data, &templates, &name, &namespace);
    let target = Target {
        name: &r.target_name,
        connection: &name,
        owner: &owner,
        labels: &conn.spec.target.labels,
        annotations: &conn.spec.target.annotations,
    };
    let ns = namespace;
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let cached = ctx.caches.managed_secret(&ns, &r.target_name);
    let published = publish(&api, &target, data, cached).await?;
    if let Published::Written(rv) = &published {
        ctx.caches.own_write(&ns, &r.target_name, rv.as_deref());
        crate::nudge::after_write(ctx, conn, &r.target_name).await;
    }
    Ok(published)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workload_secret_has_the_documented_keys_and_no_refresh_token() {
        let token = SecretString::from("AT");
        let data = workload_data(&WorkloadToken {
            access_token: &token,
            expires_at: Timestamp::from_second(1_800_000_000).expect("valid"),
            division: Some(42),
            api_base_url: "https://start.exactonline.nl/api",
            divisions: None,
        });
        let keys: Vec<&str> = data.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            vec![
                "access_token",
                "api_base_url",
                "division",
                "expires_at",
                "token_type"
            ]
        );
        assert!(!data.contains_key("refresh_token"));
        assert_eq!(
            data["api_base_url"].0,
            b"https://start.exactonline.nl/api/v1/42"
        );
        assert_eq!(data["token_type"].0, b"Bearer");
        assert_eq!(data["expires_at"].0, b"2027-01-15T08:00:00Z");
    }

    #[test]
    fn templated_keys_are_rendered_from_the_published_values_only() {
        let token = SecretString::from("AT!x");
        let mut data = workload_data(&WorkloadToken {
            access_token: &token,
            expires_at: Timestamp::from_second(1_800_000_000).expect("valid"),
            division: Some(42),
            api_base_url: "https://start.exactonline.nl/api",
            divisions: None,
        });
        let spec = BTreeMap::from([
            (
                "Authorization".to_string(),
                "{{ token_type }} {{ access_token }}".to_string(),
            ),
            (
                "tap.json".to_string(),
                "{\"access_token\": {{ access_token | json }}, \"base\": {{ api_base_url | json }}, \"name\": \"{{ connection_namespace }}/{{ connection_name }}\"}".to_string(),
            ),
        ]);
        let templates = crate::template::parse_all(&spec, &OPERATOR_KEYS).expect("valid");
        assert!(crate::template::parse_all(
            &BTreeMap::from([("divisions".to_string(), "x".to_string())]),
            &OPERATOR_KEYS
        )
        .is_err());
        add_templated(&mut data, &templates, "acme", "finance");
        assert_eq!(data["Authorization"].0, b"Bearer AT!x");
        assert_eq!(
            String::from_utf8_lossy(&data["tap.json"].0),
            r#"{"access_token": "AT!x", "base": "https://start.exactonline.nl/api/v1/42", "name": "finance/acme"}"#
        );
        assert_eq!(data["access_token"].0, b"AT!x");
        assert_eq!(data.len(), KEYS.len() + 2);
    }
}
