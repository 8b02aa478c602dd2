//! Shared helpers for graphsim's HTTP tests: a seeded simulator and a thin client.

#![allow(dead_code)]

use graphsim::{Sim, SimConfig, TenantSeed, UserSeed};
use reqwest::{Method, StatusCode};
use serde_json::Value;

pub const TENANT: &str = "contoso.onmicrosoft.com";
pub const CLIENT: &str = "11111111-2222-3333-4444-555555555555";
pub const SECRET: &str = "s3cr3t~value";
pub const ALICE: &str = "alice@contoso.onmicrosoft.com";
pub const BOB: &str = "bob@contoso.onmicrosoft.com";

pub struct Env {
    pub sim: Sim,
    pub http: reqwest::Client,
    pub token: String,
}

pub async fn env_with(config: SimConfig) -> Env {
    let sim = graphsim::spawn(config).await.expect("sim starts");
    sim.add_tenant(TenantSeed::new(TENANT, CLIENT, SECRET));
    sim.add_user(TENANT, UserSeed::member(ALICE, "Alice Smith"));
    sim.add_user(TENANT, UserSeed::member(BOB, "Bob Jones"));
    let http = reqwest::Client::new();
    let token = token(&sim, &http).await;
    Env { sim, http, token }
}

pub async fn env() -> Env {
    env_with(SimConfig::default()).await
}

pub async fn token(sim: &Sim, http: &reqwest::Client) -> String {
    let resp = http
        .post(format!(
            "{}/{TENANT}/oauth2/v2.0/token",
            sim.authority_url()
        ))
        .form(&[
            ("client_id", CLIENT),
            ("client_secret", SECRET),
            ("scope", "https://graph.microsoft.com/.default"),
            ("grant_type", "client_credentials"),
        ])
        .send()
        .await
        .expect("token request");
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.expect("token json");
    body["access_token"]
        .as_str()
        .expect("access_token")
        .to_owned()
}

/// Percent-encodes a path segment (Outlook ids contain `/`, `+`, `=`).
pub fn enc(segment: &str) -> String {
    url::form_urlencoded::byte_serialize(segment.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

pub struct Resp {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Env {
    pub fn url(&self, path: &str) -> String {
        format!("{}/v1.0{path}", self.sim.graph_url())
    }

    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Resp {
        self.call_with(method, &self.url(path), body, &[]).await
    }

    pub async fn call_with(
        &self,
        method: Method,
        url: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> Resp {
        let mut req = self.http.request(method, url).bearer_auth(&self.token);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.expect("body");
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).expect("json body")
        };
        Resp {
            status,
            headers,
            body,
        }
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.call(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Resp {
        self.call(Method::POST, path, Some(body)).await
    }

    pub async fn patch(&self, path: &str, body: Value) -> Resp {
        self.call(Method::PATCH, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> Resp {
        self.call(Method::DELETE, path, None).await
    }
}
