//! The contract between the Helm chart (`helm/central-registry`) and the binaries it runs.
//!
//! A chart can lint, render and validate cleanly and still not work: an env var that no
//! binary reads, a probe on a path the router does not serve, an argument clap refuses, a
//! client pointed at the wrong Service port. These tests render the scenarios of
//! `helm/central-registry/ci/` with the real `helm` and hold every container of ours (the
//! ones running our image) against the real binary:
//! - every env var the chart sets is one the binary reads: a `[env: NAME=]` that clap shows
//!   in the `--help` of the subcommand the chart runs, or one of the few names that the
//!   shared telemetry and client code read outside clap (each checked to be in the
//!   binary), or a variable used only inside another one's `$(NAME)`, such as `POD_IP`;
//! - the registry accepts the chart's command, arguments and env (`registry check-config`
//!   with the same arguments as `serve`);
//! - the pod's and the Service's DNS ports (UDP and TCP) are where `REGISTRY_DNS_ADDR`
//!   says the registry serves DNS, and there are none when the chart leaves DNS off;
//! - started with the chart's command, arguments and env (only the database and the listen
//!   addresses, HTTP and DNS, swapped for the test's, port 0), the registry answers 200 on
//!   every probe path, on the port the probe names; so do the demo services, which register
//!   under their pod names; with DNS on, their names resolve over UDP and TCP in the
//!   chart's domain with its TTL; the demo Job's container, run as the chart runs it,
//!   completes the flow; and on SIGTERM a demo pod deregisters and the registry stops,
//!   within the grace period the chart gives them (after the registry's preStop sleep).
//!
//! The Job (and the `helm test` pod) run `demo-client --scenario seed`, the seed's flow
//! against the installed registry, not `make demo`'s `--scenario resilience`: that story
//! starts its own local registry and services and kills them, which a pod cannot do to the
//! release; its chapter "Normal operation: the seed's flow" is this same flow
//! (`demo::scenario::seed_flow`).
//!
//! `helm` comes from PATH or `.tools/bin/helm`, and the YAML is read by the Python with
//! PyYAML in `.venv/`; `scripts/ensure-k8s-tools.sh` installs both (`make lint` runs it).
//! Without them these tests fail and say so.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use crate::dns_dig::dig;
use crate::support::{Backend, binary, eventually, repository};
use registry_client::RegistryApi;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Names read outside clap by the telemetry setup every binary shares
/// (the `telemetry` crate, the OpenTelemetry SDK, tracing-subscriber's `RUST_LOG`).
const TELEMETRY_ENV: &[&str] = &[
    "RUST_LOG",
    "LOG_FORMAT",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_SERVICE_NAME",
    "OTEL_TRACES_SAMPLER",
];

/// Names read by `RegistryApi::from_env`, which the demo binaries use.
const CLIENT_ENV: &[&str] = &["REGISTRY_URL", "REGISTRY_TOKEN"];

/// The registry's log line saying where its DNS interface listens (field `addr`).
const DNS_LISTENING: &str = "DNS listening (UDP and TCP)";

/// What the fake downward API answers for a pod's IP.
const POD_IP: &str = "10.244.1.7";

/// The scenarios the live tests run; every file of `ci/` goes through the static checks.
const LIVE_SCENARIOS: &[&str] = &[
    "defaults-values",
    "three-replicas-auth-values",
    "observability-values",
    "dns-values",
];

fn chart() -> PathBuf {
    repository().join("helm/central-registry")
}

/// `helm` from PATH, else the one scripts/ensure-k8s-tools.sh put in `.tools/bin`.
fn helm() -> PathBuf {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("helm"))
            .find(|candidate| candidate.is_file())
    });
    let local = repository().join(".tools/bin/helm");
    on_path.or_else(|| local.is_file().then_some(local)).expect(
        "helm is missing: run scripts/ensure-k8s-tools.sh (make lint-k8s runs it) to install \
         helm into .tools/bin",
    )
}

fn python() -> PathBuf {
    let python = repository().join(".venv/bin/python");
    assert!(
        python.is_file(),
        "{} is missing: run scripts/ensure-k8s-tools.sh (make lint-k8s runs it)",
        python.display()
    );
    python
}

fn scenarios() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(chart().join("ci"))
        .expect("helm/central-registry/ci")
        .filter_map(|entry| {
            let name = entry.ok()?.file_name().into_string().ok()?;
            name.strip_suffix(".yaml").map(str::to_owned)
        })
        .collect();
    names.sort();
    assert!(names.len() >= 4, "the chart has its scenarios: {names:?}");
    names
}

/// The objects `helm template` renders for one scenario of `ci/`, as JSON.
struct Rendered {
    scenario: String,
    objects: Vec<Value>,
}

impl Rendered {
    fn new(scenario: &str) -> Self {
        let values = chart().join("ci").join(format!("{scenario}.yaml"));
        let output = std::process::Command::new(helm())
            .args(["template", "central-registry"])
            .arg(chart())
            .args(["--namespace", "central-registry", "-f"])
            .arg(&values)
            .output()
            .expect("run helm template");
        assert!(
            output.status.success(),
            "helm template {scenario} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let mut convert = std::process::Command::new(python())
            .args([
                "-c",
                "import json, sys, yaml\n\
                 docs = [d for d in yaml.safe_load_all(sys.stdin) if d]\n\
                 json.dump(docs, sys.stdout)",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run python to read the YAML");
        {
            use std::io::Write as _;
            let mut stdin = convert.stdin.take().expect("stdin");
            stdin.write_all(&output.stdout).expect("send the YAML");
        }
        let converted = convert.wait_with_output().expect("python finishes");
        assert!(
            converted.status.success(),
            "reading the YAML of {scenario} failed: {}",
            String::from_utf8_lossy(&converted.stderr)
        );
        let objects: Vec<Value> =
            serde_json::from_slice(&converted.stdout).expect("the YAML as JSON");
        assert!(!objects.is_empty(), "{scenario} renders objects");
        Self {
            scenario: scenario.to_owned(),
            objects,
        }
    }

    fn of_kind<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
        self.objects.iter().filter(move |o| o["kind"] == kind)
    }

    fn named(&self, kind: &str, name: &str) -> Option<&Value> {
        self.objects
            .iter()
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
    }

    /// Every container running our image, with the pod spec it is in.
    fn our_containers(&self) -> Vec<Workload<'_>> {
        let image = self.our_image();
        let mut found = Vec::new();
        for object in &self.objects {
            let (pod, replicas) = match object["kind"].as_str() {
                Some("Deployment" | "StatefulSet") => (
                    &object["spec"]["template"]["spec"],
                    object["spec"]["replicas"].as_u64().unwrap_or(1),
                ),
                Some("Job") => (&object["spec"]["template"]["spec"], 1),
                Some("Pod") => (&object["spec"], 1),
                _ => continue,
            };
            for container in pod["containers"].as_array().into_iter().flatten() {
                let container_image = container["image"].as_str().unwrap_or_default();
                if container_image == image {
                    found.push(Workload {
                        kind: object["kind"].as_str().unwrap_or_default().to_owned(),
                        name: object["metadata"]["name"]
                            .as_str()
                            .unwrap_or_default()
                            .to_owned(),
                        replicas,
                        pod,
                        container,
                    });
                } else {
                    // The only other image is the bundled database.
                    assert!(
                        container_image.starts_with("postgres:"),
                        "{}: unexpected image {container_image}",
                        self.scenario
                    );
                }
            }
        }
        found
    }

    /// The image of the chart's values (every binary of ours is in it).
    fn our_image(&self) -> String {
        let registry = self
            .named("Deployment", "central-registry")
            .expect("the registry Deployment");
        registry["spec"]["template"]["spec"]["containers"][0]["image"]
            .as_str()
            .expect("image")
            .to_owned()
    }

    fn workloads_running(&self, binary_name: &str) -> Vec<Workload<'_>> {
        self.our_containers()
            .into_iter()
            .filter(|w| w.binary() == binary_name)
            .collect()
    }

    fn registry(&self) -> Workload<'_> {
        let mut registries = self.workloads_running("registry");
        assert_eq!(registries.len(), 1, "one registry Deployment");
        registries.remove(0)
    }

    /// A key of a Secret the chart renders (`stringData`); `None` when the Secret is the
    /// user's (existingSecret) or has no such key.
    fn secret(&self, name: &str, key: &str) -> Option<String> {
        let secret = self.named("Secret", name)?;
        secret["stringData"][key].as_str().map(str::to_owned)
    }
}

/// One container of ours and the workload it belongs to.
struct Workload<'a> {
    kind: String,
    name: String,
    replicas: u64,
    pod: &'a Value,
    container: &'a Value,
}

impl Workload<'_> {
    fn label(&self) -> String {
        format!("{} {}", self.kind, self.name)
    }

    /// The pod's terminationGracePeriodSeconds (Kubernetes' default: 30 s).
    fn grace_period(&self) -> Duration {
        Duration::from_secs(
            self.pod["terminationGracePeriodSeconds"]
                .as_u64()
                .unwrap_or(30),
        )
    }

    fn command(&self) -> Vec<String> {
        strings(&self.container["command"])
    }

    fn args(&self) -> Vec<String> {
        strings(&self.container["args"])
    }

    /// The binary this container runs: the chart always names it in `command`.
    fn binary(&self) -> String {
        let command = self.command();
        assert_eq!(
            command.len(),
            1,
            "{}: command is the binary alone, arguments go in args",
            self.label()
        );
        command[0].clone()
    }

    fn env_names(&self) -> Vec<String> {
        self.container["env"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| e["name"].as_str().expect("env name").to_owned())
            .collect()
    }

    /// The literal value the chart gives `name` (before `$(...)` expansion).
    fn env_literal(&self, name: &str) -> Option<String> {
        self.container["env"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["name"] == name)
            .and_then(|e| e["value"].as_str())
            .map(str::to_owned)
    }

    /// The env as the kubelet would give it to the pod `pod_name`: downward API values,
    /// Secret keys (from the rendered Secrets, else `placeholder`), `$(NAME)` expanded from
    /// the variables before it. Optional keys that are absent are left out.
    fn resolved_env(
        &self,
        rendered: &Rendered,
        pod_name: &str,
        placeholder: &dyn Fn(&str) -> String,
    ) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = Vec::new();
        for entry in self.container["env"].as_array().into_iter().flatten() {
            let name = entry["name"].as_str().expect("env name").to_owned();
            let value = if let Some(literal) = entry["value"].as_str() {
                expand(literal, &env)
            } else if let Some(field) = entry["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                match field {
                    "status.podIP" => POD_IP.to_owned(),
                    "metadata.name" => pod_name.to_owned(),
                    other => panic!("{}: unexpected fieldRef {other}", self.label()),
                }
            } else if let Some(secret) = entry["valueFrom"]["secretKeyRef"].as_object() {
                let secret_name = secret["name"].as_str().expect("secret name");
                let key = secret["key"].as_str().expect("secret key");
                let optional = secret.get("optional") == Some(&Value::Bool(true));
                match rendered.secret(secret_name, key) {
                    Some(value) => value,
                    None if optional => continue,
                    None => {
                        assert!(
                            rendered.named("Secret", secret_name).is_none(),
                            "{}: Secret {secret_name} has no key {key}",
                            self.label()
                        );
                        placeholder(&name)
                    }
                }
            } else {
                panic!("{}: env {name} has no value the test knows", self.label());
            };
            env.push((name, value));
        }
        env
    }

    /// The containerPort a probe or Service names (by name or number).
    fn container_port(&self, port: &Value) -> u64 {
        if let Some(number) = port.as_u64() {
            return number;
        }
        let name = port.as_str().expect("a port name or number");
        self.container["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"] == name)
            .and_then(|p| p["containerPort"].as_u64())
            .unwrap_or_else(|| panic!("{}: no container port named {name}", self.label()))
    }

    /// Every httpGet probe as (kind, path, containerPort).
    fn http_probes(&self) -> Vec<(String, String, u64)> {
        ["startupProbe", "livenessProbe", "readinessProbe"]
            .iter()
            .filter_map(|kind| {
                let get = self.container[*kind].get("httpGet")?;
                let path = get["path"].as_str().expect("probe path").to_owned();
                Some((kind.to_string(), path, self.container_port(&get["port"])))
            })
            .collect()
    }
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| v.as_str().expect("a string").to_owned())
        .collect()
}

/// Kubernetes' `$(NAME)` expansion: names defined earlier are replaced, others stay.
fn expand(value: &str, earlier: &[(String, String)]) -> String {
    let mut out = value.to_owned();
    for (name, resolved) in earlier {
        out = out.replace(&format!("$({name})"), resolved);
    }
    out
}

/// The `$(NAME)`s a value refers to.
fn references(value: &str) -> Vec<String> {
    value
        .split("$(")
        .skip(1)
        .filter_map(|rest| rest.split_once(')').map(|(name, _)| name.to_owned()))
        .collect()
}

/// The env names `binary_name` reads when run with `args`: clap's `[env: NAME=]` in the
/// help of that subcommand (`[env: NAME]` for hidden values), plus the names read outside clap (asserted to be in the
/// binary, so this list cannot go stale).
fn env_read_by(binary_name: &str, args: &[String]) -> BTreeSet<String> {
    let path = binary(binary_name);
    // The subcommand, if the binary has any: the first argument not starting with '-'.
    let subcommand: Vec<&str> = if binary_name == "registry" {
        args.iter()
            .take(1)
            .filter(|a| !a.starts_with('-'))
            .map(String::as_str)
            .collect()
    } else {
        Vec::new()
    };
    let help = std::process::Command::new(&path)
        .args(&subcommand)
        .arg("--help")
        .output()
        .expect("run --help");
    assert!(help.status.success(), "{binary_name} {subcommand:?} --help");
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    let mut names: BTreeSet<String> = help
        .split("[env: ")
        .skip(1)
        // `[env: NAME=value]`, or `[env: NAME]` when clap hides the value (secrets).
        .filter_map(|rest| rest.split(['=', ']']).next().map(str::to_owned))
        .collect();
    let bytes = std::fs::read(&path).expect("read the binary");
    let mut outside_clap: Vec<&str> = TELEMETRY_ENV.to_vec();
    if binary_name != "registry" {
        outside_clap.extend(CLIENT_ENV);
    }
    for name in outside_clap {
        assert!(
            bytes.windows(name.len()).any(|w| w == name.as_bytes()),
            "{binary_name} does not contain {name}: the list in this test is stale"
        );
        names.insert(name.to_owned());
    }
    names
}

#[test]
fn every_env_var_the_chart_sets_is_read_by_its_binary() {
    let mut checked = 0;
    for scenario in scenarios() {
        let rendered = Rendered::new(&scenario);
        for workload in rendered.our_containers() {
            let read = env_read_by(&workload.binary(), &workload.args());
            let names = workload.env_names();
            let unique: BTreeSet<&String> = names.iter().collect();
            assert_eq!(
                unique.len(),
                names.len(),
                "{scenario}: {} sets a variable twice: {names:?}",
                workload.label()
            );
            // Variables that exist only to be expanded into another one.
            let referenced: BTreeSet<String> = names
                .iter()
                .filter_map(|n| workload.env_literal(n))
                .flat_map(|v| references(&v))
                .collect();
            for name in &names {
                assert!(
                    read.contains(name) || referenced.contains(name),
                    "{scenario}: {} sets {name}, which {} does not read (it reads {read:?})",
                    workload.label(),
                    workload.binary()
                );
                checked += 1;
            }
            for name in &referenced {
                assert!(
                    names.contains(name),
                    "{scenario}: {} refers to $({name}), which it does not define",
                    workload.label()
                );
            }
        }
    }
    assert!(checked > 50, "only {checked} env vars were checked");
}

/// DATABASE_URL of a user's Secret (the external-database scenario).
fn external_placeholder(name: &str) -> String {
    match name {
        "DATABASE_URL" => "postgres://registry:secret@db.example:5432/registry".to_owned(),
        other => format!("value-of-{other}"),
    }
}

#[test]
fn the_registry_accepts_the_charts_command_and_env() {
    let check_config = |args: &[String], env: &[(String, String)]| {
        std::process::Command::new(binary("registry"))
            .arg("check-config")
            .args(args)
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k, v)))
            .output()
            .expect("run registry check-config")
    };
    for scenario in scenarios() {
        let rendered = Rendered::new(&scenario);
        let registry = rendered.registry();
        let args = registry.args();
        assert_eq!(
            args.first().map(String::as_str),
            Some("serve"),
            "{scenario}: the registry Deployment runs `registry serve`"
        );
        let env = registry.resolved_env(&rendered, "central-registry-0", &external_placeholder);
        // check-config takes the arguments of serve, and checks them and the env.
        let output = check_config(&args[1..], &env);
        assert!(
            output.status.success() && String::from_utf8_lossy(&output.stdout).contains("ok"),
            "{scenario}: registry check-config refuses the chart's settings: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        // The same check refuses a setting the chart could get wrong.
        let mut broken = env.clone();
        for (name, value) in &mut broken {
            if name == "REGISTRY_DEFAULT_TTL" {
                *value = "ten seconds".to_owned();
            }
        }
        let output = check_config(&args[1..], &broken);
        assert!(
            !output.status.success(),
            "{scenario}: check-config accepts REGISTRY_DEFAULT_TTL='ten seconds'"
        );
    }
}

/// Every port of the registry Service as (name, protocol, containerPort it reaches).
fn service_ports(rendered: &Rendered, registry: &Workload<'_>) -> Vec<(String, String, u64)> {
    let service = rendered
        .named("Service", "central-registry")
        .expect("the registry Service");
    service["spec"]["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|port| {
            (
                port["name"].as_str().expect("port name").to_owned(),
                port["protocol"].as_str().unwrap_or("TCP").to_owned(),
                registry.container_port(&port["targetPort"]),
            )
        })
        .collect()
}

#[test]
fn the_dns_ports_are_where_the_registry_serves_dns() {
    let mut with_dns = 0;
    for scenario in scenarios() {
        let rendered = Rendered::new(&scenario);
        let registry = rendered.registry();
        let env = registry.resolved_env(&rendered, "central-registry-0", &external_placeholder);
        let ports = service_ports(&rendered, &registry);
        let container_ports: Vec<(String, u64)> = registry.container["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                (
                    p["protocol"].as_str().unwrap_or("TCP").to_owned(),
                    p["containerPort"].as_u64().expect("containerPort"),
                )
            })
            .collect();
        let Some(dns_addr) = get(&env, "REGISTRY_DNS_ADDR") else {
            // DNS off: nothing of it on the pod or the Service, and no setting of it
            // (the registry would ignore them, and they would mislead whoever reads them).
            assert!(
                env.iter()
                    .all(|(name, _)| !name.starts_with("REGISTRY_DNS_")),
                "{scenario}: DNS settings without REGISTRY_DNS_ADDR: {env:?}"
            );
            assert!(
                container_ports
                    .iter()
                    .all(|(protocol, _)| protocol == "TCP"),
                "{scenario}: a UDP port while DNS is off: {container_ports:?}"
            );
            assert_eq!(ports.len(), 1, "{scenario}: only HTTP on the Service");
            continue;
        };
        with_dns += 1;
        assert!(
            dns_addr.starts_with("0.0.0.0:"),
            "{scenario}: DNS listens on every interface of the pod, not {dns_addr}"
        );
        let dns_port = port_of(&dns_addr);
        // The HTTP port stays first: the ServiceMonitor and the clients' URL use it.
        assert_eq!(ports[0].0, "http", "{scenario}: {ports:?}");
        // The pod and the Service carry DNS over UDP and TCP, both to where it listens.
        for protocol in ["UDP", "TCP"] {
            assert!(
                container_ports.contains(&(protocol.to_owned(), dns_port)),
                "{scenario}: no {protocol} container port {dns_port}: {container_ports:?}"
            );
            let on_service: Vec<_> = ports
                .iter()
                .filter(|(name, p, _)| p == protocol && name != "http")
                .collect();
            assert_eq!(
                on_service.len(),
                1,
                "{scenario}: one {protocol} DNS port on the Service: {ports:?}"
            );
            assert_eq!(
                on_service[0].2, dns_port,
                "{scenario}: the Service's {protocol} DNS port targets {dns_port}"
            );
        }
        // DNS has no tokens: the registry refuses to serve it while reads need one,
        // unless told to (check-config, run on every scenario above, enforces the same).
        if get(&env, "REGISTRY_READ_TOKEN").is_some() {
            assert_eq!(
                get(&env, "REGISTRY_DNS_ALLOW_UNAUTHENTICATED").as_deref(),
                Some("true"),
                "{scenario}: DNS with a read token"
            );
        }
    }
    assert!(with_dns > 0, "no scenario of ci/ turns DNS on");
}

#[test]
fn the_demo_job_and_helm_test_run_the_seed_flow() {
    for scenario in scenarios() {
        let rendered = Rendered::new(&scenario);
        let clients = rendered.workloads_running("demo-client");
        let services = rendered.workloads_running("demo-service");
        if rendered
            .named("Deployment", "central-registry-sum")
            .is_none()
        {
            assert!(
                clients.is_empty() && services.is_empty(),
                "{scenario}: demo off renders no demo"
            );
            continue;
        }
        let kinds: BTreeSet<&str> = clients.iter().map(|c| c.kind.as_str()).collect();
        assert_eq!(
            kinds,
            BTreeSet::from(["Job", "Pod"]),
            "{scenario}: the client runs as a Job and as the helm test"
        );
        let test_pod = rendered.of_kind("Pod").next().expect("the helm test pod");
        assert_eq!(
            test_pod["metadata"]["annotations"]["helm.sh/hook"], "test",
            "{scenario}: the Pod is a helm test"
        );
        for client in &clients {
            assert_eq!(
                client.args(),
                ["--scenario", "seed"],
                "{scenario}: {} runs the seed flow",
                client.label()
            );
        }
        assert_eq!(
            clients[0].container, clients[1].container,
            "{scenario}: the Job and the helm test run the same container"
        );
        let roles: BTreeSet<String> = services
            .iter()
            .map(|s| s.args().get(1).cloned().unwrap_or_default())
            .collect();
        assert_eq!(
            roles,
            BTreeSet::from(["concat".into(), "mult".into(), "sum".into()]),
            "{scenario}: the three seed services"
        );
    }
}

/// A child process of ours, killed when dropped; its stderr is read for JSON log lines.
struct Process {
    child: Child,
    /// Its log lines so far, for failure messages.
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Process {
    /// Starts `command` with exactly `env` (plus PATH) and waits for the JSON log line
    /// whose message is `message`; answers the process and that line's fields.
    async fn start(
        label: String,
        command: &str,
        args: &[String],
        env: &[(String, String)],
        message: &str,
    ) -> (Self, Value) {
        let mut child = Command::new(binary(command))
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start the binary");
        let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
        let mut seen = Vec::new();
        let fields = tokio::time::timeout(Duration::from_secs(60), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(entry) = serde_json::from_str::<Value>(&line)
                    && entry["fields"]["message"] == message
                {
                    return Some(entry["fields"].clone());
                }
                seen.push(line);
            }
            None
        })
        .await
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("{label} did not log '{message}'; its log: {seen:#?}"));
        // Keep reading the log so the process never blocks on a full pipe.
        let log = std::sync::Arc::new(std::sync::Mutex::new(seen));
        let kept = log.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                kept.lock().expect("log").push(line);
            }
        });
        (Self { child, log }, fields)
    }

    /// Where the registry's DNS interface listens, from its log line saying so.
    async fn dns_addr(&self) -> std::net::SocketAddr {
        eventually(
            Duration::from_secs(30),
            "the registry's DNS to listen",
            || {
                let found = self.log.lock().expect("log").iter().find_map(|line| {
                    let entry: Value = serde_json::from_str(line).ok()?;
                    (entry["fields"]["message"] == DNS_LISTENING)
                        .then(|| entry["fields"]["addr"].as_str()?.parse().ok())?
                });
                async move { found }
            },
        )
        .await
    }

    /// The last lines it logged.
    fn log_tail(&self) -> String {
        let log = self.log.lock().expect("log");
        log[log.len().saturating_sub(20)..].join("\n")
    }

    /// SIGTERM, as the kubelet sends after the preStop hook; answers how the process exited,
    /// panicking if it is still running after `grace` (when the kubelet would SIGKILL it).
    async fn terminate(&mut self, grace: Duration, what: &str) -> std::process::ExitStatus {
        crate::support::sigterm(&self.child).await;
        tokio::time::timeout(grace, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("{what} still runs {grace:?} after SIGTERM"))
            .expect("wait for the process")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.start_kill();
        }
    }
}

/// GET `url` until it answers 200 (the registry's readiness may take a moment).
async fn answers_ok(http: &reqwest::Client, url: &str, what: &str) {
    eventually(Duration::from_secs(30), what, || async {
        let response = http.get(url).send().await.ok()?;
        (response.status() == reqwest::StatusCode::OK).then_some(())
    })
    .await;
}

fn port_of(addr: &str) -> u64 {
    addr.rsplit_once(':')
        .and_then(|(_, port)| port.parse().ok())
        .unwrap_or_else(|| panic!("{addr} has no port"))
}

fn set(env: &mut Vec<(String, String)>, name: &str, value: Option<String>) {
    env.retain(|(n, _)| n != name);
    if let Some(value) = value {
        env.push((name.to_owned(), value));
    }
}

fn get(env: &[(String, String)], name: &str) -> Option<String> {
    env.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone())
}

/// Runs one scenario as the cluster would: the registry, every demo service replica and
/// the demo client Job, each from the chart's own command, args and env.
async fn run_scenario_live(scenario: &str) {
    let rendered = Rendered::new(scenario);
    // Like the kubelet's prober: a new connection per probe, none kept alive.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .pool_max_idle_per_host(0)
        .build()
        .expect("http client");

    // The registry, on a fresh Postgres database and port 0.
    let registry = rendered.registry();
    let mut env = registry.resolved_env(&rendered, "central-registry-0", &external_placeholder);
    let chart_addr = get(&env, "REGISTRY_ADDR").expect("the chart sets REGISTRY_ADDR");
    let listen_port = port_of(&chart_addr);
    set(
        &mut env,
        "DATABASE_URL",
        Some(Backend::Postgres.fresh_url().await),
    );
    set(&mut env, "REGISTRY_ADDR", Some("127.0.0.1:0".to_owned()));
    // DNS, when the chart turns it on, on loopback and port 0 too (UDP and TCP share it).
    let dns = get(&env, "REGISTRY_DNS_ADDR").map(|_| DnsSettings::of(&env));
    if dns.is_some() {
        set(
            &mut env,
            "REGISTRY_DNS_ADDR",
            Some("127.0.0.1:0".to_owned()),
        );
    }
    assert_eq!(
        get(&env, "LOG_FORMAT").as_deref(),
        Some("json"),
        "{scenario}: JSON log lines in the cluster"
    );
    let (mut registry_process, fields) = Process::start(
        format!("{scenario} registry"),
        "registry",
        &registry.args(),
        &env,
        "registry listening",
    )
    .await;
    let bound = fields["addr"].as_str().expect("addr").to_owned();
    let base_url = format!("http://{bound}");
    let probes = registry.http_probes();
    assert_eq!(probes.len(), 3, "{scenario}: startup, liveness, readiness");
    for (kind, path, port) in &probes {
        assert_eq!(
            *port, listen_port,
            "{scenario}: the registry's {kind} probes port {port}, it listens on {chart_addr}"
        );
        answers_ok(
            &http,
            &format!("{base_url}{path}"),
            &format!("{scenario}: the registry's {kind} on {path}"),
        )
        .await;
    }
    let probe_paths: BTreeSet<&str> = probes.iter().map(|(_, p, _)| p.as_str()).collect();
    assert_eq!(probe_paths, BTreeSet::from(["/healthz", "/readyz"]));

    // The Service in front of it, which the clients' REGISTRY_URL names.
    let service = rendered
        .named("Service", "central-registry")
        .expect("the registry Service");
    let service_port = &service["spec"]["ports"][0];
    assert_eq!(
        registry.container_port(&service_port["targetPort"]),
        listen_port,
        "{scenario}: the Service targets the registry's port"
    );
    let registry_url = format!(
        "http://central-registry:{}",
        service_port["port"].as_u64().expect("service port")
    );
    for monitor in rendered.of_kind("ServiceMonitor") {
        let endpoint = &monitor["spec"]["endpoints"][0];
        assert_eq!(
            endpoint["port"], service_port["name"],
            "{scenario}: ServiceMonitor port"
        );
        let path = endpoint["path"].as_str().expect("ServiceMonitor path");
        answers_ok(
            &http,
            &format!("{base_url}{path}"),
            &format!("{scenario}: the ServiceMonitor's {path}"),
        )
        .await;
    }

    let write_token = rendered.secret("central-registry-auth", "token");
    let mut api = RegistryApi::new(&base_url).expect("client");
    if let Some(token) = &write_token {
        api = api.with_token(token.clone());
    }

    // Every replica of every demo service, as its pod would run it.
    let mut services = Vec::new();
    let mut expected: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut listen_ports: BTreeMap<String, BTreeSet<u16>> = BTreeMap::new();
    for workload in rendered.workloads_running("demo-service") {
        let port = workload.container_port(&Value::from("http"));
        for replica in 0..workload.replicas {
            let pod = format!("{}-{replica}", workload.name);
            let mut env = workload.resolved_env(&rendered, &pod, &external_placeholder);
            assert_eq!(
                get(&env, "REGISTRY_URL").as_deref(),
                Some(registry_url.as_str()),
                "{scenario}: {} finds the registry through its Service",
                workload.label()
            );
            assert_eq!(
                get(&env, "REGISTRY_TOKEN"),
                write_token,
                "{scenario}: {} has the write token when auth is on",
                workload.label()
            );
            assert_eq!(
                get(&env, "ADVERTISE_URL"),
                Some(format!("http://{POD_IP}:{port}")),
                "{scenario}: {} registers its pod URL",
                workload.label()
            );
            assert_eq!(
                port_of(&get(&env, "LISTEN_ADDR").expect("LISTEN_ADDR")),
                port,
                "{scenario}: {} listens on its container port",
                workload.label()
            );
            // Here: port 0 on loopback, and the URL it is reached at.
            set(&mut env, "REGISTRY_URL", Some(base_url.clone()));
            set(&mut env, "LISTEN_ADDR", Some("127.0.0.1:0".to_owned()));
            set(&mut env, "ADVERTISE_URL", None);
            let (process, fields) = Process::start(
                format!("{scenario} {pod}"),
                "demo-service",
                &workload.args(),
                &env,
                "demo service listening",
            )
            .await;
            let listen = fields["listen"].as_str().expect("listen").to_owned();
            let probes = workload.http_probes();
            assert!(
                !probes.is_empty(),
                "{scenario}: {} has probes",
                workload.label()
            );
            for (kind, path, probe_port) in probes {
                assert_eq!(probe_port, port, "{scenario}: {pod} {kind} port");
                answers_ok(
                    &http,
                    &format!("http://{listen}{path}"),
                    &format!("{scenario}: {pod}'s {kind} on {path}"),
                )
                .await;
            }
            let role = workload.args().get(1).cloned().expect("--role value");
            expected
                .entry(role.clone())
                .or_default()
                .insert(pod.clone());
            listen_ports
                .entry(role)
                .or_default()
                .insert(u16::try_from(port_of(&listen)).expect("a port"));
            services.push((pod, process, workload.grace_period()));
        }
    }
    if services.is_empty() {
        return;
    }
    // Each pod is registered under its role, with its pod name as the instance id.
    for (service, pods) in &expected {
        eventually(
            Duration::from_secs(30),
            &format!("{scenario}: {service} registers {pods:?}"),
            || async {
                let found = api.service(service, None).await.ok()?;
                let ids: BTreeSet<String> = found.instances.iter().map(|i| i.id.clone()).collect();
                (&ids == pods).then_some(())
            },
        )
        .await;
    }

    // Their names resolve through the registry's DNS, over UDP and TCP, with the chart's
    // domain and TTL.
    if let Some(dns) = &dns {
        let addr = registry_process.dns_addr().await;
        for tcp in [false, true] {
            dns.resolves(scenario, addr, tcp, &listen_ports).await;
        }
    }

    // The demo Job's container, to completion.
    let job = rendered
        .workloads_running("demo-client")
        .into_iter()
        .find(|w| w.kind == "Job")
        .expect("the demo client Job");
    let mut env = job.resolved_env(&rendered, "demo-client", &external_placeholder);
    assert_eq!(
        get(&env, "REGISTRY_URL").as_deref(),
        Some(registry_url.as_str())
    );
    assert_eq!(get(&env, "REGISTRY_TOKEN"), write_token);
    set(&mut env, "REGISTRY_URL", Some(base_url.clone()));
    let output = tokio::time::timeout(
        Duration::from_secs(120),
        Command::new(binary("demo-client"))
            .args(job.args())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the demo client finishes within 2 minutes")
    .expect("run demo-client");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{scenario}: the demo Job fails: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for line in [
        "[ok] sum answers 25 and concat's phrase",
        "[ok] mult answers 150 and concat's phrase",
    ] {
        assert!(stdout.contains(line), "{scenario}: no '{line}' in {stdout}");
    }

    // A demo pod going away leaves the registry itself: SIGTERM (no preStop hook) sets it in
    // maintenance, drains and deregisters it within the pod's grace period. The pod is a
    // `concat` one: `sum` and `mult` still hold idle keep-alive connections to it, which
    // must not keep it from leaving.
    let index = services
        .iter()
        .position(|(pod, _, _)| expected["concat"].contains(pod))
        .expect("a concat pod");
    let (pod, mut process, grace) = services.remove(index);
    let status = process.terminate(grace, &format!("{scenario} {pod}")).await;
    assert!(
        status.success(),
        "{scenario}: {pod} exits cleanly on SIGTERM: {status}"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let found = api.service("concat", None).await.expect("read the service");
        if !found.instances.iter().any(|i| i.id == pod) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{scenario}: {pod} is still registered 30 s after it exited; its log:\n{}",
            process.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(services);

    // The registry stops on SIGTERM within what the grace period leaves after preStop.
    let pre_stop = registry.container["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_u64()
        .expect("the registry's preStop sleep");
    let grace = registry.grace_period();
    assert!(
        grace > Duration::from_secs(pre_stop),
        "{scenario}: the grace period outlasts the preStop sleep"
    );
    let status = registry_process
        .terminate(
            grace - Duration::from_secs(pre_stop),
            &format!("{scenario} registry"),
        )
        .await;
    assert!(
        status.success(),
        "{scenario}: the registry exits cleanly on SIGTERM: {status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chart_runs_against_the_real_binaries() {
    for scenario in LIVE_SCENARIOS {
        assert!(
            scenarios().iter().any(|s| s == scenario),
            "{scenario} is a scenario of ci/"
        );
        run_scenario_live(scenario).await;
    }
}

/// The registry's DNS settings as the chart gives them, for the queries of the live test.
struct DnsSettings {
    domain: String,
    ttl: u32,
}

impl DnsSettings {
    /// The settings in `env`, with the registry's defaults for those the chart leaves out.
    fn of(env: &[(String, String)]) -> Self {
        let ttl = get(env, "REGISTRY_DNS_TTL").unwrap_or_else(|| "0s".to_owned());
        Self {
            domain: get(env, "REGISTRY_DNS_DOMAIN").unwrap_or_else(|| "consul".to_owned()),
            // The scenarios give whole seconds (values.schema.json allows 1m too).
            ttl: ttl
                .strip_suffix('s')
                .unwrap_or(&ttl)
                .parse()
                .unwrap_or_else(|_| panic!("REGISTRY_DNS_TTL={ttl}: the test reads seconds")),
        }
    }

    /// Every service in `ports` (service -> its instances' ports) resolves: A to the
    /// loopback address the demo services advertise, SRV to each instance's port, both
    /// with the chart's TTL; a service nobody registered is NXDOMAIN.
    async fn resolves(
        &self,
        scenario: &str,
        addr: std::net::SocketAddr,
        tcp: bool,
        ports: &BTreeMap<String, BTreeSet<u16>>,
    ) {
        let over = if tcp { "TCP" } else { "UDP" };
        let transport: &[&str] = if tcp { &["+tcp"] } else { &[] };
        for (service, expected_ports) in ports {
            let name = format!("{service}.service.{}", self.domain);
            let what = format!("{scenario}: A {name} over {over}");
            let answer = eventually(Duration::from_secs(30), &what, || async {
                let answer = dig(addr, &name, "A", transport).await;
                (answer.status == "NOERROR" && !answer.answer.is_empty()).then_some(answer)
            })
            .await;
            for record in &answer.answer {
                assert_eq!(record.kind, "A", "{what}: {}", answer.text);
                assert_eq!(record.data, "127.0.0.1", "{what}: the advertised address");
                assert_eq!(record.ttl, self.ttl, "{what}: the chart's TTL");
            }

            let name = format!("_{service}._tcp.service.{}", self.domain);
            let what = format!("{scenario}: SRV {name} over {over}");
            let answer = eventually(Duration::from_secs(30), &what, || async {
                let answer = dig(addr, &name, "SRV", transport).await;
                // SRV data: priority, weight, port, target.
                let found: BTreeSet<u16> = answer
                    .answers("SRV")
                    .iter()
                    .filter_map(|data| data.split_whitespace().nth(2)?.parse().ok())
                    .collect();
                (answer.status == "NOERROR" && &found == expected_ports).then_some(answer)
            })
            .await;
            for record in answer.answer.iter().filter(|r| r.kind == "SRV") {
                assert_eq!(record.ttl, self.ttl, "{what}: the chart's TTL");
            }
        }
        let name = format!("no-such-service.service.{}", self.domain);
        let answer = dig(addr, &name, "A", transport).await;
        assert_eq!(
            answer.status, "NXDOMAIN",
            "{scenario}: A {name} over {over} names no service: {}",
            answer.text
        );
    }
}
