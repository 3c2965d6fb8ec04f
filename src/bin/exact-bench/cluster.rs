//! The control plane: started with `scripts/testenv` into a temporary folder, or an existing
//! one from `--kubeconfig`; CRD installation and the API server's own request counters.

use anyhow::{bail, Context as _};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config, ResourceExt};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Field manager of everything the bench writes.
pub const FIELD_MANAGER: &str = "exact-bench";

/// A control plane the bench uses; stops it on drop when the bench started it.
pub struct ControlPlane {
    /// Admin kubeconfig.
    pub kubeconfig: PathBuf,
    /// testenv state folder when the bench started the control plane itself.
    started_in: Option<PathBuf>,
}

impl ControlPlane {
    /// Starts etcd + kube-apiserver via `scripts/testenv start DIR --watch-pid <our pid>`.
    pub fn start(dir: &Path) -> anyhow::Result<Self> {
        let script = repo_path("scripts/testenv");
        eprintln!("bench: starting kube-apiserver + etcd in {}", dir.display());
        let out = Command::new(&script)
            .arg("start")
            .arg(dir)
            .arg("--watch-pid")
            .arg(std::process::id().to_string())
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {}", script.display()))?;
        if !out.status.success() {
            bail!(
                "testenv start failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(ControlPlane {
            kubeconfig: dir.join("kubeconfig"),
            started_in: Some(dir.to_path_buf()),
        })
    }

    /// Uses an existing control plane.
    pub fn existing(kubeconfig: PathBuf) -> Self {
        ControlPlane {
            kubeconfig,
            started_in: None,
        }
    }

    /// Pid of a daemon the bench started (`kube-apiserver`, `etcd`).
    pub fn pid(&self, daemon: &str) -> Option<u32> {
        let dir = self.started_in.as_ref()?;
        std::fs::read_to_string(dir.join(format!("{daemon}.pid")))
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if let Some(dir) = &self.started_in {
            let _ = Command::new(repo_path("scripts/testenv"))
                .arg("stop")
                .arg(dir)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// A path in the repository.
pub fn repo_path(relative: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// A client from a kubeconfig file.
pub async fn client(kubeconfig: &Path) -> anyhow::Result<Client> {
    let kc = Kubeconfig::read_from(kubeconfig)
        .with_context(|| format!("reading {}", kubeconfig.display()))?;
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(config)?)
}

/// Server-side applies the CRDs of `crds/*.yaml` and waits until they are served.
pub async fn install_crds(client: &Client) -> anyhow::Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let params = PatchParams::apply(FIELD_MANAGER).force();
    for file in [
        "crds/exactoauthclients.yaml",
        "crds/exactconnections.yaml",
        "crds/exactwebhooksubscriptions.yaml",
    ] {
        let yaml = std::fs::read_to_string(repo_path(file))?;
        for doc in serde_yaml::Deserializer::from_str(&yaml) {
            let value = serde_yaml::Value::deserialize(doc)?;
            if value.is_null() {
                continue;
            }
            let crd: CustomResourceDefinition = serde_yaml::from_value(value)?;
            api.patch(&crd.name_any(), &params, &Patch::Apply(&crd))
                .await?;
        }
    }
    let conns: Api<exact_operator::crd::ExactConnection> = Api::all(client.clone());
    let clients: Api<exact_operator::crd::ExactOAuthClient> = Api::all(client.clone());
    for _ in 0..300 {
        let lp = ListParams::default().limit(1);
        if conns.list(&lp).await.is_ok() && clients.list(&lp).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!("CRDs not served within 60 s")
}

/// Request counts by (verb, resource, subresource, code), from `apiserver_request_total`.
pub type Requests = BTreeMap<(String, String, String, String), f64>;

/// Scrapes the API server's `/metrics` (needs the admin identity).
pub async fn scrape(client: &Client) -> anyhow::Result<Requests> {
    let req = kube::core::Request::new("/metrics").list(&ListParams::default())?;
    let text = client.request_text(req).await?;
    Ok(parse_requests(&text))
}

/// Sums `apiserver_request_total` by verb, resource, subresource and code.
pub fn parse_requests(text: &str) -> Requests {
    let mut out = Requests::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("apiserver_request_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let Ok(value) = value.trim().parse::<f64>() else {
            continue;
        };
        let labels = parse_labels(labels);
        let get = |k: &str| labels.get(k).cloned().unwrap_or_default();
        let key = (
            get("verb"),
            get("resource"),
            get("subresource"),
            get("code"),
        );
        *out.entry(key).or_default() += value;
    }
    out
}

fn parse_labels(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut chars = s.chars().peekable();
    loop {
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() || chars.next() != Some('"') {
            break;
        }
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => value.extend(chars.next()),
                '"' => break,
                c => value.push(c),
            }
        }
        out.insert(key.trim_start_matches(',').to_string(), value);
        if chars.peek() == Some(&',') {
            chars.next();
        }
    }
    out
}

/// `after - before`, dropping zero rows.
pub fn diff(before: &Requests, after: &Requests) -> Requests {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, v)| *v > 0.0)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_request_counters() {
        let text = r#"# HELP apiserver_request_total x
apiserver_request_total{code="200",component="apiserver",contentType="application/json;as=Table,application/json",dry_run="",group="",resource="secrets",scope="resource",subresource="",verb="GET",version="v1"} 7
apiserver_request_total{code="404",component="apiserver",contentType="application/json",dry_run="",group="",resource="secrets",scope="resource",subresource="",verb="GET",version="v1"} 3
apiserver_request_total{code="200",component="apiserver",contentType="application/json",dry_run="",group="exact-operator.io",resource="exactconnections",scope="resource",subresource="status",verb="APPLY",version="v1alpha1"} 2
"#;
        let r = parse_requests(text);
        let key = |v: &str, r: &str, s: &str, c: &str| {
            (v.to_string(), r.to_string(), s.to_string(), c.to_string())
        };
        assert_eq!(r[&key("GET", "secrets", "", "200")], 7.0);
        assert_eq!(r[&key("GET", "secrets", "", "404")], 3.0);
        assert_eq!(r[&key("APPLY", "exactconnections", "status", "200")], 2.0);
    }
}
