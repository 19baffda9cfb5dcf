//! HTTP client for the node's admin API (types from `echomesh_proto::admin`).

use std::path::Path;

use anyhow::{anyhow, Context};
use echomesh_proto::admin::ErrorBody;
use serde::{de::DeserializeOwned, Serialize};

pub struct AdminClient {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl AdminClient {
    pub fn new(base: &str, token_file: &Path) -> anyhow::Result<Self> {
        let token = std::fs::read_to_string(token_file)
            .ok()
            .map(|t| t.trim().to_string());
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(60))
            .build()
            .context("building HTTP client")?;
        Ok(AdminClient {
            base: base.trim_end_matches('/').to_string(),
            token,
            http,
        })
    }

    /// The admin API's base URL (`http://HOST:PORT`).
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `GET path` without a token (health endpoints): the status code, or an error when the
    /// node does not answer.
    pub async fn probe(&self, path: &str) -> anyhow::Result<u16> {
        let url = format!("{}{path}", self.base);
        let resp = self
            .http
            .get(&url)
            .timeout(std::time::Duration::from_secs(5))
            .send()
            .await
            .with_context(|| format!("no answer from {url}"))?;
        Ok(resp.status().as_u16())
    }

    fn token_hint(&self) -> &'static str {
        if self.token.is_none() {
            " (no token file was readable: pass --token-file <data-dir>/admin.token)"
        } else {
            ""
        }
    }

    async fn send<T: DeserializeOwned>(&self, req: reqwest::RequestBuilder) -> anyhow::Result<T> {
        let req = match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        };
        let resp = req.send().await.map_err(|e| {
            anyhow!(
                "cannot reach the admin API at {}: {e}. Is echomesh-node running? (set --admin URL)",
                self.base
            )
        })?;
        let status = resp.status();
        if status.is_success() {
            return resp.json::<T>().await.context("reading admin API answer");
        }
        let body = resp.text().await.unwrap_or_default();
        let msg = serde_json::from_str::<ErrorBody>(&body)
            .map(|e| e.error)
            .unwrap_or(body);
        Err(anyhow!(
            "{msg} (HTTP {}){}",
            status.as_u16(),
            if status.as_u16() == 401 {
                self.token_hint()
            } else {
                ""
            }
        ))
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.send(self.http.get(format!("{}{path}", self.base)))
            .await
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        self.send(self.http.post(format!("{}{path}", self.base)).json(body))
            .await
    }

    pub async fn put<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        self.send(self.http.put(format!("{}{path}", self.base)).json(body))
            .await
    }

    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.send(self.http.delete(format!("{}{path}", self.base)))
            .await
    }

    pub async fn delete_with<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        self.send(self.http.delete(format!("{}{path}", self.base)).json(body))
            .await
    }

    /// `GET path` as text without a token (`/metrics`).
    pub async fn text(&self, path: &str) -> anyhow::Result<String> {
        let url = format!("{}{path}", self.base);
        let resp = self
            .http
            .get(&url)
            .send()
            .await
            .with_context(|| format!("no answer from {url}"))?;
        if !resp.status().is_success() {
            return Err(anyhow!("{url} answered {}", resp.status()));
        }
        resp.text()
            .await
            .with_context(|| format!("reading the answer of {url}"))
    }
}
