//! [`ServiceClient`]: one call to "an instance of service X", with everything a call
//! needs around it: discovery from the local cache, round robin over instances
//! whose breaker admits a call, a circuit breaker per instance, a timeout, one retry on
//! another instance for idempotent calls, and the W3C `traceparent` header.
//!
//! Why one type does all of it: each piece is only right in combination with the others.
//! The balancer must skip instances whose breaker is open, the retry must go to an instance
//! not tried yet, the breaker must see the outcome of every attempt (and only the
//! instance's failures: connect errors, timeouts, 5xx; a 4xx is the caller's mistake), and
//! the attempts of one call must be spans of one trace. Callers get all of that by naming
//! a service.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use registry_client::RegistryApi;
//! use registry_client::caller::{CallError, CallerOptions, ServiceClient};
//! use registry_client::discovery::Discovery;
//!
//! let discovery = Discovery::new(RegistryApi::new("http://registry:8000")?);
//! let client = ServiceClient::new(discovery, CallerOptions::default());
//! match client.get("sum", "/sum?x=1&y=2").await {
//!     Ok(answer) => println!("HTTP {} from {}", answer.status, answer.instance.id),
//!     Err(CallError::CircuitOpen { service }) => eprintln!("every {service} is failing"),
//!     Err(other) => eprintln!("{other}"),
//! }
//! # Ok(())
//! # }
//! ```

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use registry_api::{Instance, Status};
use reqwest::Method;
use serde::de::DeserializeOwned;
use tokio::time::Instant;
use tracing::Instrument as _;

use crate::ClientError;
use crate::balancer::{RoundRobin, Routing};
use crate::breaker::{BreakerConfig, Breakers, Outcome, Permit};
use crate::discovery::Discovery;
use crate::trace::{self, TraceParent};

/// Settings of a [`ServiceClient`]; [`Default`] gives the default named on each field.
///
/// ```
/// use std::time::Duration;
/// use registry_client::breaker::BreakerConfig;
/// use registry_client::caller::CallerOptions;
///
/// let options = CallerOptions {
///     call_timeout: Duration::from_millis(500),
///     breaker: BreakerConfig::builder().minimum_calls(5).build()?,
///     ..CallerOptions::default()
/// };
/// assert_eq!(options.idempotent_attempts, 2);
/// # Ok::<(), String>(())
/// ```
#[derive(Debug, Clone)]
pub struct CallerOptions {
    /// Longest time one attempt may take, answer included (default 2 s); also the connect
    /// timeout.
    pub call_timeout: Duration,
    /// Breaker settings shared by every target instance.
    pub breaker: BreakerConfig,
    /// Instances called at most for an idempotent call (GET, HEAD, PUT, DELETE, OPTIONS):
    /// the first and, on failure, each next one on an instance not tried yet (default 2:
    /// one retry). Other methods are called once. 0 counts as 1.
    pub idempotent_attempts: u32,
    /// Panic routing (default 0.5, as Envoy): when fewer than this share of a service's
    /// known, non-maintenance instances are `passing` or `warning`, calls spread over all
    /// of them, `critical` ones included, with the breakers as the guard (see
    /// [`balancer`](crate::balancer)). 0 turns it off: calls then follow the statuses
    /// whatever they are.
    pub panic_threshold: f64,
}

impl Default for CallerOptions {
    fn default() -> Self {
        Self {
            call_timeout: Duration::from_secs(2),
            breaker: BreakerConfig::default(),
            idempotent_attempts: 2,
            panic_threshold: crate::balancer::DEFAULT_PANIC_THRESHOLD,
        }
    }
}

/// Why a call did not produce an answer.
///
/// After a retry the error is the one of the last attempt.
///
/// ```
/// use std::time::Duration;
/// use registry_client::caller::CallError;
///
/// /// Whether waiting a little and calling again may help.
/// fn worth_retrying_later(error: &CallError) -> bool {
///     matches!(
///         error,
///         CallError::CircuitOpen { .. } | CallError::Timeout { .. } | CallError::Transport { .. }
///     ) || matches!(error, CallError::Status { status, .. } if *status >= 500)
/// }
///
/// let error = CallError::Timeout {
///     service: "sum".into(),
///     url: "http://10.0.0.7:4040/sum".into(),
///     timeout: Duration::from_secs(2),
/// };
/// assert!(worth_retrying_later(&error));
/// assert_eq!(error.to_string(), "'sum' at http://10.0.0.7:4040/sum did not answer within 2s");
/// ```
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// Nothing to call: the registry knows no instance of the service that may take
    /// traffic (none registered, all of them in maintenance, or, with panic routing off,
    /// all of them critical or in maintenance).
    #[error("no instance of '{service}' is available")]
    NoInstance {
        /// The service called.
        service: String,
    },
    /// Instances exist, but every one's circuit breaker refuses calls now; nothing was
    /// sent.
    #[error("every instance of '{service}' has its circuit open")]
    CircuitOpen {
        /// The service called.
        service: String,
    },
    /// The instance did not answer within [`CallerOptions::call_timeout`] (counted as a
    /// failure by its breaker).
    #[error("'{service}' at {url} did not answer within {timeout:?}")]
    Timeout {
        /// The service called.
        service: String,
        /// The URL called.
        url: String,
        /// The timeout that ran out.
        timeout: Duration,
    },
    /// The request could not be sent or its answer not read: connection refused or reset,
    /// DNS failure (counted as a failure by the instance's breaker).
    #[error("'{service}' at {url} could not be reached: {message}")]
    Transport {
        /// The service called.
        service: String,
        /// The URL called.
        url: String,
        /// The error and its causes, joined by `: `.
        message: String,
    },
    /// The instance answered with an error status: a 5xx from [`ServiceClient::call`]
    /// (counted as a failure), or any non-2xx from [`ServiceClient::get_json`]. The body
    /// is kept for the caller.
    #[error("'{service}' at {url} answered HTTP {status}")]
    Status {
        /// The service called.
        service: String,
        /// The URL called (for `get_json`: the instance's URL).
        url: String,
        /// The HTTP status.
        status: u16,
        /// The answer's body.
        body: Bytes,
    },
    /// The answer is not the JSON expected.
    #[error("the answer of '{service}' is not what was expected: {message}")]
    Decode {
        /// The service called.
        service: String,
        /// What `serde_json` found wrong.
        message: String,
    },
    /// Nothing is known about the service and the registry cannot be asked.
    #[error("cannot discover '{service}': {source}")]
    Discovery {
        /// The service called.
        service: String,
        /// Why the registry could not answer.
        #[source]
        source: ClientError,
    },
}

/// A successful answer: a 2xx, or a 4xx, which is the caller's business rather than the
/// instance's failure (check `status`).
///
/// ```
/// use registry_client::caller::CallResponse;
/// # use registry_client::{Instance, Status};
/// # fn instance(id: &str) -> Instance {
/// #     let now = chrono::Utc::now();
/// #     Instance {
/// #         id: id.into(), service: "sum".into(), url: format!("http://{id}:4040"),
/// #         status: Status::Passing, tags: vec![], metadata: Default::default(),
/// #         ttl_seconds: 10, check: None, registered_at: now, last_heartbeat_at: now,
/// #         lease_expires_at: None, status_changed_at: now, last_check: None, lease_held: false,
/// #         deregister_critical_after: None, lease_status: None, lease_output: None, maintenance_reason: None,
/// #     }
/// # }
///
/// let response = CallResponse {
///     status: 200,
///     body: bytes::Bytes::from_static(br#"{"result": 3}"#),
///     instance: instance("sum-2"),
///     attempts: 2,
/// };
/// if response.attempts > 1 {
///     println!("answered by {} after a retry", response.instance.id);
/// }
/// assert_eq!(response.json::<serde_json::Value>()?["result"], 3);
/// # Ok::<(), registry_client::caller::CallError>(())
/// ```
#[derive(Debug, Clone)]
pub struct CallResponse {
    /// The HTTP status (below 500).
    pub status: u16,
    /// The answer's body.
    pub body: Bytes,
    /// The instance that answered.
    pub instance: Instance,
    /// Instances called: 1, or more when earlier ones failed and another one answered.
    pub attempts: u32,
}

impl CallResponse {
    /// Decodes the body as JSON, whatever the status; [`CallError::Decode`] if it does
    /// not fit `T`.
    ///
    /// ```
    /// use registry_client::caller::{CallError, CallResponse};
    /// # use registry_client::{Instance, Status};
    /// # fn instance(id: &str) -> Instance {
    /// #     let now = chrono::Utc::now();
    /// #     Instance {
    /// #         id: id.into(), service: "sum".into(), url: format!("http://{id}:4040"),
    /// #         status: Status::Passing, tags: vec![], metadata: Default::default(),
    /// #         ttl_seconds: 10, check: None, registered_at: now, last_heartbeat_at: now,
    /// #         lease_expires_at: None, status_changed_at: now, last_check: None, lease_held: false,
    /// #         deregister_critical_after: None, lease_status: None, lease_output: None, maintenance_reason: None,
    /// #     }
    /// # }
    ///
    /// #[derive(serde::Deserialize)]
    /// struct Sum {
    ///     result: i64,
    /// }
    ///
    /// let mut response = CallResponse {
    ///     status: 200,
    ///     body: bytes::Bytes::from_static(br#"{"result": 3}"#),
    ///     instance: instance("sum-1"),
    ///     attempts: 1,
    /// };
    /// assert_eq!(response.json::<Sum>()?.result, 3);
    ///
    /// response.body = bytes::Bytes::from_static(b"<html>oops</html>");
    /// assert!(matches!(response.json::<Sum>(), Err(CallError::Decode { .. })));
    /// # Ok::<(), CallError>(())
    /// ```
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, CallError> {
        serde_json::from_slice(&self.body).map_err(|e| CallError::Decode {
            service: self.instance.service.clone(),
            message: e.to_string(),
        })
    }
}

/// Calls instances of other services by name. Cheap to clone: clones share the discovery
/// cache, the round-robin positions and the breakers.
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

impl std::fmt::Debug for ServiceClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceClient")
            .field("discovery", &self.discovery)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl ServiceClient {
    /// A client that finds instances through `discovery`. Does no I/O: the first call to a
    /// service resolves it.
    ///
    /// ```
    /// use std::time::Duration;
    /// use registry_client::RegistryApi;
    /// use registry_client::caller::{CallerOptions, ServiceClient};
    /// use registry_client::discovery::Discovery;
    ///
    /// let discovery = Discovery::new(RegistryApi::new("http://registry:8000")?);
    /// let client = ServiceClient::new(
    ///     discovery,
    ///     CallerOptions { call_timeout: Duration::from_millis(800), ..CallerOptions::default() },
    /// );
    /// # Ok::<(), registry_client::ClientError>(())
    /// ```
    pub fn new(discovery: Discovery, options: CallerOptions) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(options.call_timeout)
            .build()
            .unwrap_or_default();
        Self {
            discovery,
            balancer: Arc::new(RoundRobin::with_panic_threshold(options.panic_threshold)),
            breakers: Arc::new(
                Breakers::new(options.breaker.clone())
                    .with_state_report(crate::metrics::breaker_state),
            ),
            http,
            options: Arc::new(options),
        }
    }

    /// The breakers, one per target instance, keyed by [`breaker_key`] (`service/id`):
    /// for metrics, logs of transitions, or a status page.
    ///
    /// ```
    /// use registry_client::RegistryApi;
    /// use registry_client::caller::{CallerOptions, ServiceClient};
    /// use registry_client::discovery::Discovery;
    ///
    /// let discovery = Discovery::new(RegistryApi::new("http://registry:8000")?);
    /// let client = ServiceClient::new(discovery, CallerOptions::default());
    /// for (key, snapshot) in client.breakers().snapshot() {
    ///     println!("{key}: {} ({} failed calls)", snapshot.state, snapshot.failed_calls);
    /// }
    /// let mut transitions = client.breakers().subscribe(); // every breaker, present and future
    /// # Ok::<(), registry_client::ClientError>(())
    /// ```
    pub fn breakers(&self) -> &Breakers {
        &self.breakers
    }

    /// The discovery cache the client resolves through.
    ///
    /// ```
    /// use registry_client::RegistryApi;
    /// use registry_client::caller::{CallerOptions, ServiceClient};
    /// use registry_client::discovery::Discovery;
    ///
    /// let discovery = Discovery::new(RegistryApi::new("http://registry:8000")?);
    /// let client = ServiceClient::new(discovery, CallerOptions::default());
    /// assert!(client.discovery().cached("sum").is_none(), "nothing called yet");
    /// # Ok::<(), registry_client::ClientError>(())
    /// ```
    pub fn discovery(&self) -> &Discovery {
        &self.discovery
    }

    /// `GET` on an instance of `service`, retried on another instance on failure (see
    /// [`call`](Self::call)). A 4xx is an answer, not an error.
    ///
    /// ```no_run
    /// # async fn demo(client: registry_client::caller::ServiceClient) -> Result<(), registry_client::caller::CallError> {
    /// let answer = client.get("sum", "/sum?x=1&y=2").await?;
    /// if answer.status == 404 {
    ///     println!("{} has no /sum", answer.instance.id);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn get(
        &self,
        service: &str,
        path_and_query: &str,
    ) -> Result<CallResponse, CallError> {
        self.call(Method::GET, service, path_and_query, None).await
    }

    /// `GET` and decode the JSON answer; any non-2xx status is a [`CallError::Status`]
    /// (a 4xx still does not count against the instance's breaker).
    ///
    /// ```no_run
    /// # async fn demo(client: registry_client::caller::ServiceClient) -> Result<(), registry_client::caller::CallError> {
    /// #[derive(serde::Deserialize)]
    /// struct Sum {
    ///     result: i64,
    /// }
    ///
    /// let sum: Sum = client.get_json("sum", "/sum?x=1&y=2").await?;
    /// println!("1 + 2 = {}", sum.result);
    /// # Ok(())
    /// # }
    /// ```
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
    /// JSON. The instance is the next one in round robin among the `passing` instances
    /// whose breaker admits a call (`warning` ones when none is left; in panic, any
    /// non-maintenance instance, see [`CallerOptions::panic_threshold`]). Idempotent methods
    /// (see [`CallerOptions::idempotent_attempts`]) are retried on another instance after
    /// a connect error, a timeout or a 5xx; other methods are never retried. Every attempt
    /// carries a `traceparent`: a child of [`trace::current`] inside
    /// [`trace::in_trace`], otherwise of a new trace, the same for every attempt of the
    /// call.
    ///
    /// Fails with [`CallError::NoInstance`] or [`CallError::CircuitOpen`] when there is
    /// nothing to call, [`CallError::Discovery`] when the service cannot be resolved, and
    /// otherwise with the error of the last attempt.
    ///
    /// ```no_run
    /// # async fn demo(client: registry_client::caller::ServiceClient) -> Result<(), registry_client::caller::CallError> {
    /// use bytes::Bytes;
    /// use reqwest::Method;
    ///
    /// let order = Bytes::from_static(br#"{"item": "tea", "count": 2}"#);
    /// // A POST is not idempotent: called once, never retried.
    /// let created = client.call(Method::POST, "orders", "/orders", Some(order)).await?;
    /// assert!(created.status < 500);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn call(
        &self,
        method: Method,
        service: &str,
        path_and_query: &str,
        body: Option<Bytes>,
    ) -> Result<CallResponse, CallError> {
        let started = std::time::Instant::now();
        let result = self
            .call_uncounted(method, service, path_and_query, body)
            .await;
        let outcome = match &result {
            Ok(_) => "success",
            Err(CallError::CircuitOpen { .. }) => "circuit_open",
            Err(CallError::NoInstance { .. }) => "no_instance",
            Err(CallError::Timeout { .. }) => "timeout",
            Err(_) => "failure",
        };
        crate::metrics::call(service, outcome, started.elapsed());
        result
    }

    async fn call_uncounted(
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
        // One context per call, so that a retry reads as a second span of the same trace
        // rather than as an unrelated trace.
        let context = trace::current().unwrap_or_else(TraceParent::new_root);
        let mut tried: HashSet<String> = HashSet::new();
        let mut made = 0;
        let mut last_error = None;
        // Decided once per call, so that a retry is routed as the first attempt was.
        let routing = self.balancer.routing_of(service, &resolved.instances);
        while made < attempts {
            let breakers = &self.breakers;
            let picked = self
                .balancer
                .pick_routed(routing, service, &resolved.instances, |i| {
                    !tried.contains(&i.id) && breakers.get(&breaker_key(i)).would_admit()
                });
            let Some(instance) = picked.cloned() else {
                break;
            };
            if routing == Routing::Panic && tried.is_empty() {
                crate::metrics::panic_routing(service);
            }
            tried.insert(instance.id.clone());
            // Another call may have taken the last half-open probe slot since the pick:
            // that instance was not called, so it costs no attempt (a POST would otherwise
            // fail with `CircuitOpen` while other instances admit calls).
            let Ok(permit) = self.breakers.get(&breaker_key(&instance)).try_acquire() else {
                continue;
            };
            made += 1;
            match self
                .attempt(
                    permit,
                    &method,
                    &instance,
                    path_and_query,
                    body.clone(),
                    &context,
                )
                .await
            {
                Ok(response) => {
                    return Ok(CallResponse {
                        attempts: made,
                        ..response
                    });
                }
                Err(error) => last_error = Some(error),
            }
        }
        Err(last_error.unwrap_or_else(|| nothing_to_call(routing, service, &resolved.instances)))
    }

    /// One attempt on one instance, under `permit` of its breaker.
    async fn attempt(
        &self,
        permit: Permit,
        method: &Method,
        instance: &Instance,
        path_and_query: &str,
        body: Option<Bytes>,
        context: &TraceParent,
    ) -> Result<CallResponse, CallError> {
        let url = join(&instance.url, path_and_query);
        let timeout = self.options.call_timeout;
        let span = tracing::info_span!(
            "call",
            otel.name = %format!("{method} {}", instance.service),
            otel.kind = "client",
            http.request.method = %method,
            url.full = %url,
            instance = %instance.id,
        );
        let mut request = self
            .http
            .request(method.clone(), &url)
            .header("traceparent", trace::header_for(&span, context));
        if let Some(body) = body {
            request = request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body);
        }
        let started = Instant::now();
        let sent = tokio::time::timeout(
            timeout,
            async {
                let response = request.send().await?;
                let status = response.status().as_u16();
                let body = response.bytes().await?;
                Ok::<_, reqwest::Error>((status, body))
            }
            .instrument(span),
        )
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
                Ok(CallResponse {
                    status,
                    body,
                    instance: instance.clone(),
                    attempts: 1,
                })
            }
        }
    }
}

/// Why no instance was called: some would have been (by status, or any non-maintenance
/// one in panic) but every breaker refused, or none would have been.
fn nothing_to_call(routing: Routing, service: &str, instances: &[Instance]) -> CallError {
    let callable = |status: Status| match routing {
        Routing::Panic => status != Status::Maintenance,
        Routing::Normal => matches!(status, Status::Passing | Status::Warning),
    };
    if instances.iter().any(|i| callable(i.status)) {
        CallError::CircuitOpen {
            service: service.to_owned(),
        }
    } else {
        CallError::NoInstance {
            service: service.to_owned(),
        }
    }
}

/// The key of an instance's breaker in [`ServiceClient::breakers`]: `service/id`. Service
/// and id survive re-registration (a new URL, a restart), so a restarted instance keeps
/// its record of failures.
///
/// ```
/// use registry_client::caller::breaker_key;
/// # use registry_client::{Instance, Status};
/// # fn instance(id: &str) -> Instance {
/// #     let now = chrono::Utc::now();
/// #     Instance {
/// #         id: id.into(), service: "sum".into(), url: format!("http://{id}:4040"),
/// #         status: Status::Passing, tags: vec![], metadata: Default::default(),
/// #         ttl_seconds: 10, check: None, registered_at: now, last_heartbeat_at: now,
/// #         lease_expires_at: None, status_changed_at: now, last_check: None, lease_held: false,
/// #         deregister_critical_after: None, lease_status: None, lease_output: None, maintenance_reason: None,
/// #     }
/// # }
///
/// assert_eq!(breaker_key(&instance("sum-1")), "sum/sum-1");
/// ```
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
