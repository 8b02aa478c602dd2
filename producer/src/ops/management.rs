//! The one management HTTP API call `status` makes: `GET /api/queues/{vhost}` with the columns it shows.
//!
//! AMQP gives a queue's ready messages and consumers but not its unacknowledged messages (jobs being worked on),
//! which is what tells "stuck" from "busy". The management plugin has them where it is enabled. Its figures are
//! sampled (every 5 s by default), so `status` still takes ready and consumer counts from AMQP, which is live.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use lapin::uri::{AMQPScheme, AMQPUri};
use serde::Deserialize;
use shared::mq::redact_url;
use shared::secret::Secret;
use url::Url;

/// How long `status` waits for the management API before reporting without it.
const TIMEOUT: Duration = Duration::from_secs(5);

/// A queue as the management API reports it. Fields are missing while the broker has no statistics yet.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct ManagedQueue {
    /// Name.
    pub name: String,
    /// Ready plus unacknowledged.
    pub messages: Option<u64>,
    /// Ready for delivery.
    pub messages_ready: Option<u64>,
    /// Delivered, not yet acknowledged.
    pub messages_unacknowledged: Option<u64>,
    /// Consumers.
    pub consumers: Option<u64>,
}

/// A client for the management API of the broker an AMQP URL names.
#[derive(Debug, Clone)]
pub struct Management {
    client: reqwest::Client,
    /// Base URL without credentials (safe to print).
    base: Url,
    username: String,
    password: Secret,
    vhost: String,
}

impl Management {
    /// Targets `management_url` when given (credentials in it win), else `http://<amqp host>:15672/`
    /// (`https://…:15671/` for `amqps`), authenticating with the AMQP URL's user, on the AMQP URL's vhost.
    pub fn new(amqp_url: &str, management_url: Option<&str>) -> Result<Self> {
        let amqp = AMQPUri::from_str(amqp_url)
            .map_err(|_| anyhow::anyhow!("{} is not a valid AMQP URL", redact_url(amqp_url)))?;
        let mut username = amqp.authority.userinfo.username.clone();
        let mut password = amqp.authority.userinfo.password.clone();
        let mut base = match management_url {
            Some(text) => Url::parse(text).map_err(|_| {
                anyhow::anyhow!("{} is not a valid management URL", redact_url(text))
            })?,
            None => {
                let (scheme, port) = match amqp.scheme {
                    AMQPScheme::AMQPS => ("https", 15671),
                    AMQPScheme::AMQP => ("http", 15672),
                };
                Url::parse(&format!("{scheme}://{}:{port}/", amqp.authority.host)).with_context(
                    || format!("deriving the management URL from {}", redact_url(amqp_url)),
                )?
            }
        };
        if !base.username().is_empty() {
            username = percent_decode(base.username());
            password = base.password().map(percent_decode).unwrap_or_default();
        }
        // Credentials travel in a header, never in a URL that could end up in an error message.
        let _ = base.set_username("");
        let _ = base.set_password(None);
        if base.cannot_be_a_base() {
            bail!("{base} cannot be a management API base URL");
        }
        let client = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .build()
            .context("building the management API client")?;
        Ok(Self {
            client,
            base,
            username,
            password: Secret::new(password),
            vhost: amqp.vhost,
        })
    }

    /// The base URL, without credentials.
    pub fn url(&self) -> &Url {
        &self.base
    }

    /// Every queue of the vhost, by name.
    pub async fn queues(&self) -> Result<HashMap<String, ManagedQueue>> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|()| anyhow::anyhow!("{} cannot be a base URL", self.base))?
            .pop_if_empty()
            .extend(["api", "queues", self.vhost.as_str()]);
        url.query_pairs_mut().append_pair(
            "columns",
            "name,messages,messages_ready,messages_unacknowledged,consumers",
        );
        let response = self
            .client
            .get(url.clone())
            .basic_auth(&self.username, Some(self.password.expose()))
            .send()
            .await
            .with_context(|| format!("management API at {} is not reachable", self.base))?;
        let status = response.status();
        if !status.is_success() {
            bail!(
                "management API at {} answered {status} for {url}",
                self.base
            );
        }
        let queues: Vec<ManagedQueue> = response.json().await.with_context(|| {
            format!("management API at {} sent an unexpected answer", self.base)
        })?;
        Ok(queues.into_iter().map(|q| (q.name.clone(), q)).collect())
    }
}

fn percent_decode(text: &str) -> String {
    url::form_urlencoded::parse(format!("x={text}").as_bytes())
        .next()
        .map(|(_, value)| value.into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_to_the_amqp_host_and_hides_credentials() {
        let management =
            Management::new("amqp://ops:s3cret@rabbit.internal:5672/fleet", None).expect("valid");
        assert_eq!(management.url().as_str(), "http://rabbit.internal:15672/");
        assert_eq!(management.username, "ops");
        assert_eq!(management.password.expose(), "s3cret");
        assert_eq!(management.vhost, "fleet");
        assert!(!format!("{management:?}").contains("s3cret"));
    }

    #[test]
    fn an_explicit_url_and_its_credentials_win() {
        let management = Management::new(
            "amqps://ops:s3cret@rabbit:5671/%2f",
            Some("https://monitor:p%40ss@mq.example.com/rabbitmq/"),
        )
        .expect("valid");
        assert_eq!(
            management.url().as_str(),
            "https://mq.example.com/rabbitmq/"
        );
        assert_eq!(management.username, "monitor");
        assert_eq!(management.password.expose(), "p@ss");
        assert_eq!(management.vhost, "/");
    }

    #[test]
    fn a_bad_url_is_reported_without_its_password() {
        let error =
            Management::new("amqp://ops:s3cret@rabbit:notaport/", None).expect_err("invalid");
        assert!(!format!("{error:#}").contains("s3cret"), "{error:#}");
    }
}
