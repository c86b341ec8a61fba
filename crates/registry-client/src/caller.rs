//! [`ServiceClient`]: one call to "an instance of service X", with everything DESIGN
//! section 6 puts around it: discovery from the local cache, round robin over instances
//! whose breaker admits a call, a circuit breaker per instance, a timeout, one retry on
//! another instance for idempotent calls, and the W3C `traceparent` header.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use registry_api::{Instance, Status};
use reqwest::Method;
use serde::de::DeserializeOwned;
use tokio::time::Instant;

use crate::balancer::RoundRobin;
use crate::breaker::{BreakerConfig, Breakers, Outcome};
use crate::discovery::Discovery;
use crate::{ClientError, trace};

/// Settings of a [`ServiceClient`].
#[derive(Debug, Clone)]
pub struct CallerOptions {
    /// Longest time one attempt may take, answer included (default 2 s).
    pub call_timeout: Duration,
    /// Breaker settings shared by every target instance.
    pub breaker: BreakerConfig,
    /// Attempts for idempotent calls (GET, HEAD, PUT, DELETE): the first and one retry on
    /// another instance (default 2).
    pub idempotent_attempts: u32,
}

impl Default for CallerOptions {
    fn default() -> Self {
        Self {
            call_timeout: Duration::from_secs(2),
            breaker: BreakerConfig::default(),
            idempotent_attempts: 2,
        }
    }
}

/// Why a call did not produce an answer.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The registry knows no passing or warning instance of the service.
    #[error("no instance of '{service}' is available")]
    NoInstance { service: String },
    /// Instances exist, but every one's circuit breaker refuses calls now.
    #[error("every instance of '{service}' has its circuit open")]
    CircuitOpen { service: String },
    #[error("'{service}' at {url} did not answer within {timeout:?}")]
    Timeout {
        service: String,
        url: String,
        timeout: Duration,
    },
    #[error("'{service}' at {url} could not be reached: {message}")]
    Transport {
        service: String,
        url: String,
        message: String,
    },
    /// The instance answered with an error status (the body is kept for the caller).
    #[error("'{service}' at {url} answered HTTP {status}")]
    Status {
        service: String,
        url: String,
        status: u16,
        body: Bytes,
    },
    #[error("the answer of '{service}' is not what was expected: {message}")]
    Decode { service: String, message: String },
    /// Nothing is known about the service and the registry cannot be asked.
    #[error("cannot discover '{service}': {source}")]
    Discovery {
        service: String,
        #[source]
        source: ClientError,
    },
}

/// A successful answer (2xx, or a 4xx, which is the caller's business, not a failure).
#[derive(Debug, Clone)]
pub struct CallResponse {
    pub status: u16,
    pub body: Bytes,
    /// The instance that answered.
    pub instance: Instance,
    /// 1, or 2 when the first instance failed and another one answered.
    pub attempts: u32,
}

impl CallResponse {
    /// Decodes the body as JSON.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, CallError> {
        serde_json::from_slice(&self.body).map_err(|e| CallError::Decode {
            service: self.instance.service.clone(),
            message: e.to_string(),
        })
    }
}

/// Calls instances of other services by name. Cheap to clone.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use registry_client::RegistryApi;
/// use registry_client::caller::{CallerOptions, ServiceClient};
/// use registry_client::discovery::Discovery;
///
/// let discovery = Discovery::new(RegistryApi::new("http://registry:8000")?);
/// let client = ServiceClient::new(discovery, CallerOptions::default());
/// let answer: serde_json::Value = client.get_json("concat", "/concat?x=a&y=b").await?;
/// println!("{answer}");
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct ServiceClient {
    discovery: Discovery,
    balancer: Arc<RoundRobin>,
    breakers: Arc<Breakers>,
    http: reqwest::Client,
    options: Arc<CallerOptions>,
}

impl ServiceClient {
    /// A client that finds instances through `discovery`.
    pub fn new(discovery: Discovery, options: CallerOptions) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(options.call_timeout)
            .build()
            .unwrap_or_default();
        Self {
            discovery,
            balancer: Arc::new(RoundRobin::new()),
            breakers: Arc::new(Breakers::new(options.breaker.clone())),
            http,
            options: Arc::new(options),
        }
    }

    /// The breakers, one per target instance (`service/id`), for inspection.
    pub fn breakers(&self) -> &Breakers {
        &self.breakers
    }

    /// The discovery cache the client resolves through.
    pub fn discovery(&self) -> &Discovery {
        &self.discovery
    }

    /// `GET` on an instance of `service` (retried once on another instance on failure).
    pub async fn get(
        &self,
        service: &str,
        path_and_query: &str,
    ) -> Result<CallResponse, CallError> {
        self.call(Method::GET, service, path_and_query, None).await
    }

    /// `GET` and decode the JSON answer; an error status is an error.
    pub async fn get_json<T: DeserializeOwned>(
        &self,
        service: &str,
        path_and_query: &str,
    ) -> Result<T, CallError> {
        let response = self.get(service, path_and_query).await?;
        if !(200..300).contains(&response.status) {
            return Err(CallError::Status {
                service: service.to_owned(),
                url: response.instance.url.clone(),
                status: response.status,
                body: response.body,
            });
        }
        response.json()
    }

    /// Any call. `path_and_query` is appended to the instance's URL; `body` is sent as
    /// JSON. Idempotent methods get one retry on another instance.
    pub async fn call(
        &self,
        method: Method,
        service: &str,
        path_and_query: &str,
        body: Option<Bytes>,
    ) -> Result<CallResponse, CallError> {
        let resolved =
            self.discovery
                .resolve(service)
                .await
                .map_err(|source| CallError::Discovery {
                    service: service.to_owned(),
                    source,
                })?;
        let attempts = if is_idempotent(&method) {
            self.options.idempotent_attempts.max(1)
        } else {
            1
        };
        let mut tried: HashSet<String> = HashSet::new();
        let mut last_error = None;
        for attempt in 1..=attempts {
            let breakers = &self.breakers;
            let picked = self.balancer.pick(service, &resolved.instances, |i| {
                !tried.contains(&i.id) && breakers.get(&breaker_key(i)).would_admit()
            });
            let Some(instance) = picked.cloned() else {
                break;
            };
            tried.insert(instance.id.clone());
            match self
                .attempt(&method, &instance, path_and_query, body.clone())
                .await
            {
                Ok(Some(response)) => {
                    return Ok(CallResponse {
                        attempts: attempt,
                        ..response
                    });
                }
                Ok(None) => continue,
                Err(error) => last_error = Some(error),
            }
        }
        Err(last_error.unwrap_or_else(|| self.nothing_to_call(service, &resolved.instances)))
    }

    /// One attempt on one instance. `Ok(None)` when its breaker refused at the last moment.
    async fn attempt(
        &self,
        method: &Method,
        instance: &Instance,
        path_and_query: &str,
        body: Option<Bytes>,
    ) -> Result<Option<CallResponse>, CallError> {
        let breaker = self.breakers.get(&breaker_key(instance));
        let Ok(permit) = breaker.try_acquire() else {
            return Ok(None);
        };
        let url = join(&instance.url, path_and_query);
        let timeout = self.options.call_timeout;
        let mut request = self
            .http
            .request(method.clone(), &url)
            .header("traceparent", trace::outgoing().to_string());
        if let Some(body) = body {
            request = request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body);
        }
        let started = Instant::now();
        let sent = tokio::time::timeout(timeout, async {
            let response = request.send().await?;
            let status = response.status().as_u16();
            let body = response.bytes().await?;
            Ok::<_, reqwest::Error>((status, body))
        })
        .await;
        let elapsed = started.elapsed();
        let service = instance.service.clone();
        match sent {
            Err(_) => {
                permit.record(Outcome::Failure, elapsed);
                Err(CallError::Timeout {
                    service,
                    url,
                    timeout,
                })
            }
            Ok(Err(error)) => {
                permit.record(Outcome::Failure, elapsed);
                Err(CallError::Transport {
                    service,
                    url,
                    message: error_chain(&error),
                })
            }
            Ok(Ok((status, body))) if status >= 500 => {
                permit.record(Outcome::Failure, elapsed);
                Err(CallError::Status {
                    service,
                    url,
                    status,
                    body,
                })
            }
            Ok(Ok((status, body))) => {
                // 4xx is the caller's mistake, not the instance's failure.
                permit.record(Outcome::Success, elapsed);
                Ok(Some(CallResponse {
                    status,
                    body,
                    instance: instance.clone(),
                    attempts: 1,
                }))
            }
        }
    }

    fn nothing_to_call(&self, service: &str, instances: &[Instance]) -> CallError {
        let any_up = instances
            .iter()
            .any(|i| matches!(i.status, Status::Passing | Status::Warning));
        if any_up {
            CallError::CircuitOpen {
                service: service.to_owned(),
            }
        } else {
            CallError::NoInstance {
                service: service.to_owned(),
            }
        }
    }
}

/// The breaker of an instance is keyed by service and id, which survive re-registration.
pub fn breaker_key(instance: &Instance) -> String {
    format!("{}/{}", instance.service, instance.id)
}

fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::PUT | Method::DELETE | Method::OPTIONS
    )
}

/// `http://h:1/` + `/sum?x=1` = `http://h:1/sum?x=1` (one slash between them).
fn join(base: &str, path_and_query: &str) -> String {
    format!(
        "{}/{}",
        base.trim_end_matches('/'),
        path_and_query.trim_start_matches('/')
    )
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_puts_one_slash_between() {
        assert_eq!(join("http://h:1", "/sum?x=1"), "http://h:1/sum?x=1");
        assert_eq!(join("http://h:1/", "sum"), "http://h:1/sum");
        assert_eq!(join("http://h:1/api/", "/v"), "http://h:1/api/v");
    }

    #[test]
    fn idempotent_methods() {
        assert!(is_idempotent(&Method::GET));
        assert!(is_idempotent(&Method::PUT));
        assert!(!is_idempotent(&Method::POST));
        assert!(!is_idempotent(&Method::PATCH));
    }
}
