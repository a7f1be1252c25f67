//! The CLI's side of the admin API: `weft deploy`, `weft list`, `weft undeploy`.

use anyhow::{Result, anyhow, bail};
use weft_runtime::api::{DeploymentInfo, ErrorBody, SPEC_HEADER, Status};
use weft_runtime::spec::ComponentSpec;

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

    /// Deploys `wasm` as `name`; returns what is live and whether anything changed.
    pub async fn deploy(
        &self,
        name: &str,
        spec: &ComponentSpec,
        wasm: Vec<u8>,
    ) -> Result<(DeploymentInfo, bool)> {
        let request = self
            .request(reqwest::Method::PUT, &format!("/v1/components/{name}"))
            .header(SPEC_HEADER, serde_json::to_string(spec)?)
            .header("content-type", "application/wasm")
            .body(wasm);
        let response = self.send(request).await?;
        let changed = response.status() == reqwest::StatusCode::CREATED;
        Ok((response.json().await?, changed))
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

    /// Removes `name`.
    pub async fn undeploy(&self, name: &str) -> Result<DeploymentInfo> {
        let request = self.request(reqwest::Method::DELETE, &format!("/v1/components/{name}"));
        Ok(self.send(request).await?.json().await?)
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let request = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<reqwest::Response> {
        let response = request.send().await.map_err(|e| {
            if e.is_connect() {
                anyhow!(
                    "no weft host answers at {}: start one with `weft up`, or pass --admin with the right address",
                    self.base
                )
            } else {
                anyhow!("talking to the host at {}: {e}", self.base)
            }
        })?;
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
