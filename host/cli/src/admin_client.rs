//! The CLI's side of the admin API: `weft deploy`, `weft list`, `weft undeploy`.

use anyhow::{Result, anyhow, bail};
use std::time::Duration;

use weft_runtime::api::{DeploymentInfo, ErrorBody, LatticeView, Rollout, SPEC_HEADER, Status};
use weft_runtime::lattice::ROLLOUT_WAIT;
use weft_runtime::spec::ComponentSpec;

/// What a deploy or undeploy answered.
#[derive(Debug, Clone)]
pub enum Answer {
    /// A host alone: the deployment, and whether anything changed.
    Host(DeploymentInfo, bool),
    /// A host in a lattice: every host's answer.
    Lattice(Rollout),
}

/// A connection to one host's admin API.
#[derive(Debug, Clone)]
pub struct AdminClient {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl AdminClient {
    /// A client for the admin API at `base` (for example `http://127.0.0.1:7070`).
    pub fn new(base: &str, token: Option<String>) -> AdminClient {
        AdminClient {
            base: base.trim_end_matches('/').to_string(),
            token,
            http: reqwest::Client::new(),
        }
    }

    /// Deploys `wasm` as `name` to a host alone; returns what is live and whether
    /// anything changed.
    pub async fn deploy(
        &self,
        name: &str,
        spec: &ComponentSpec,
        wasm: Vec<u8>,
    ) -> Result<(DeploymentInfo, bool)> {
        match self.deploy_and_wait(name, spec, wasm, ROLLOUT_WAIT).await? {
            Answer::Host(info, changed) => Ok((info, changed)),
            Answer::Lattice(r) => bail!(
                "the host is in lattice `{}`: {} went to the lattice (see `weft list`)",
                r.lattice,
                r.name
            ),
        }
    }

    /// Deploys `wasm` as `name`: on a host alone, what is live and whether anything
    /// changed; on a host in a lattice, every host's answer (waiting up to `wait`).
    pub async fn deploy_and_wait(
        &self,
        name: &str,
        spec: &ComponentSpec,
        wasm: Vec<u8>,
        wait: Duration,
    ) -> Result<Answer> {
        let path = format!("/v1/components/{name}?wait={}", wait.as_secs());
        let request = self
            .request(reqwest::Method::PUT, &path)
            .header(SPEC_HEADER, serde_json::to_string(spec)?)
            .header("content-type", "application/wasm")
            .body(wasm);
        self.answer(request).await
    }

    /// What a deploy or undeploy answered: a rollout (also when a host refused it, as
    /// `422` with every host's answer), or the one host's deployment.
    async fn answer(&self, request: reqwest::RequestBuilder) -> Result<Answer> {
        let response = request.send().await.map_err(|e| self.unreachable(e))?;
        let status = response.status();
        let body = response.bytes().await?;
        if let Ok(rollout) = serde_json::from_slice::<Rollout>(&body) {
            return Ok(Answer::Lattice(rollout));
        }
        if status.is_success() {
            let info = serde_json::from_slice(&body)?;
            return Ok(Answer::Host(info, status == reqwest::StatusCode::CREATED));
        }
        let message = serde_json::from_slice::<ErrorBody>(&body)
            .map_or_else(|_| "no details".to_string(), |b| b.error);
        bail!("the host refused ({status}): {message}")
    }

    /// The lattice the host is in: what it wants and where each host stands.
    pub async fn lattice(&self) -> Result<LatticeView> {
        Ok(self
            .send(self.request(reqwest::Method::GET, "/v1/lattice"))
            .await?
            .json()
            .await?)
    }

    /// The host's state: how it is connected.
    pub async fn status(&self) -> Result<Status> {
        Ok(self
            .send(self.request(reqwest::Method::GET, "/v1/status"))
            .await?
            .json()
            .await?)
    }

    /// Lists what is deployed.
    pub async fn list(&self) -> Result<Vec<DeploymentInfo>> {
        Ok(self
            .send(self.request(reqwest::Method::GET, "/v1/components"))
            .await?
            .json()
            .await?)
    }

    /// Removes `name` from a host alone.
    pub async fn undeploy(&self, name: &str) -> Result<DeploymentInfo> {
        match self.undeploy_and_wait(name, ROLLOUT_WAIT).await? {
            Answer::Host(info, _) => Ok(info),
            Answer::Lattice(r) => bail!(
                "the host is in lattice `{}`: {} was removed from the lattice",
                r.lattice,
                r.name
            ),
        }
    }

    /// Removes `name` (in a lattice: from every host, waiting up to `wait`).
    pub async fn undeploy_and_wait(&self, name: &str, wait: Duration) -> Result<Answer> {
        let path = format!("/v1/components/{name}?wait={}", wait.as_secs());
        self.answer(self.request(reqwest::Method::DELETE, &path))
            .await
    }

    fn unreachable(&self, e: reqwest::Error) -> anyhow::Error {
        if e.is_connect() {
            anyhow!(
                "no weft host answers at {}: start one with `weft up`, or pass --admin with the right address",
                self.base
            )
        } else {
            anyhow!("talking to the host at {}: {e}", self.base)
        }
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let request = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<reqwest::Response> {
        let response = request.send().await.map_err(|e| self.unreachable(e))?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let message = match response.json::<ErrorBody>().await {
            Ok(body) => body.error,
            Err(_) => "no details".to_string(),
        };
        bail!("the host refused ({status}): {message}")
    }
}
