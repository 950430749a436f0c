//! HTTP: a JSON endpoint of the host app (an internal admin API) that lists token sets. Fetched
//! with a timeout, an optional bearer token and TLS (rustls; extra CA from `ca_file`); the
//! list is found by `items_path` and mapped like any other document.

use super::{DocumentRows, RowSink};
use crate::config::{HttpStore, Mapping};
use crate::model::{CollectError, DocumentError};
use crate::secret::Secret;

/// Largest answer read (a bigger one is an error, not a memory spike).
const MAX_BODY: usize = 256 * 1024 * 1024;

#[derive(Debug)]
pub struct HttpSource {
    client: reqwest::Client,
    url: String,
    items_path: Vec<String>,
    bearer: Option<Secret>,
    headers: Vec<(String, String)>,
}

impl HttpSource {
    pub fn new(cfg: &HttpStore) -> Result<Self, CollectError> {
        super::install_tls_provider();
        let mut builder = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .user_agent(concat!("oauth-token-exporter/", env!("CARGO_PKG_VERSION")));
        if let Some(ca) = &cfg.ca_file {
            let pem = super::read_ca_file(ca)?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem).map_err(|_| {
                CollectError::Connect(format!("ca_file {} is not a PEM bundle", ca.display()))
            })? {
                builder = builder.add_root_certificate(cert);
            }
        }
        let client = builder
            .build()
            .map_err(|e| CollectError::Connect(format!("cannot build the HTTP client: {e}")))?;
        Ok(HttpSource {
            client,
            url: cfg.url.clone(),
            items_path: cfg.items_path.clone(),
            bearer: cfg.bearer_token.clone(),
            headers: cfg.headers.clone(),
        })
    }

    pub async fn fetch(
        &self,
        mapping: &Mapping,
        sink: &mut dyn RowSink,
    ) -> Result<(), CollectError> {
        let mut req = self.client.get(&self.url);
        for (k, v) in &self.headers {
            req = req.header(k, v);
        }
        if let Some(b) = &self.bearer {
            req = req.bearer_auth(b.expose());
        }
        // Errors without the URL: it may carry a query-string credential.
        let resp = req.send().await.map_err(|e| {
            if e.is_timeout() {
                CollectError::Connect("the endpoint did not answer in time".into())
            } else {
                CollectError::Connect(e.without_url().to_string())
            }
        })?;
        let status = resp.status();
        if !status.is_success() {
            return Err(CollectError::Query(format!(
                "the endpoint answered HTTP {status}"
            )));
        }
        if resp.content_length().is_some_and(|l| l as usize > MAX_BODY) {
            return Err(DocumentError::TooLarge(MAX_BODY).into());
        }
        let body = resp
            .bytes()
            .await
            .map_err(|e| CollectError::Connect(e.without_url().to_string()))?;
        if body.len() > MAX_BODY {
            return Err(DocumentError::TooLarge(MAX_BODY).into());
        }
        let doc: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| DocumentError::NotJson {
                what: "the answer".into(),
                line: e.line(),
                column: e.column(),
            })?;
        let mut items = &doc;
        for key in &self.items_path {
            items = items
                .get(key.as_str())
                .ok_or_else(|| DocumentError::NoItems(self.items_path.join(".")))?;
        }
        let mut rows = DocumentRows::new(mapping, sink);
        match items {
            serde_json::Value::Array(list) => {
                for (i, item) in list.iter().enumerate() {
                    rows.push_json(&i.to_string(), item);
                }
            }
            serde_json::Value::Object(m) => {
                for (k, item) in m {
                    rows.push_json(k, item);
                }
            }
            _ => return Err(DocumentError::NotTokenSets.into()),
        }
        Ok(())
    }
}
