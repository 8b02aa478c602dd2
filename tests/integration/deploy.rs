//! Static checks of the deployment files (`deploy/`, `docker-compose.yml`) against the code.
//!
//! No Docker engine or Kubernetes cluster is available where the tests run, so these parse the files and compare
//! what they name (queues, queue arguments, probe paths, ports, Secrets, services) with what the code declares
//! and serves. A topology change in `shared::mq` that is not carried over to `deploy/` fails here.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use shared::message::{FailureReason, Lane, Phase};
use shared::mq::topology::{dead_letter_policy, exchanges, queue_arguments};
use shared::mq::Topology;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lives in the workspace")
        .to_path_buf()
}

fn read(relative: &str) -> String {
    let path = repo_root().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Every YAML document of a file, merge keys (`<<`) applied, as JSON values.
fn yaml_docs(relative: &str) -> Vec<Value> {
    let text = read(relative);
    let mut docs = Vec::new();
    for document in serde_yaml_ng::Deserializer::from_str(&text) {
        let mut value: serde_yaml_ng::Value = serde::Deserialize::deserialize(document)
            .unwrap_or_else(|e| panic!("{relative} is not valid YAML: {e}"));
        value
            .apply_merge()
            .unwrap_or_else(|e| panic!("{relative}: bad merge key: {e}"));
        if value.is_null() {
            continue; // an empty document (e.g. a trailing `---`)
        }
        let value = serde_json::to_value(&value)
            .unwrap_or_else(|e| panic!("{relative}: not representable as JSON: {e}"));
        docs.push(value);
    }
    docs
}

/// The one document of `kind` in a file.
fn doc_of_kind(relative: &str, kind: &str) -> Value {
    let mut matching: Vec<Value> = yaml_docs(relative)
        .into_iter()
        .filter(|d| d["kind"] == kind)
        .collect();
    assert_eq!(matching.len(), 1, "{relative} must hold exactly one {kind}");
    matching.remove(0)
}

fn str_at<'a>(value: &'a Value, pointer: &str) -> &'a str {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("expected a string at {pointer} in {value}"))
}

fn int_at(value: &Value, pointer: &str) -> i64 {
    value
        .pointer(pointer)
        .and_then(Value::as_i64)
        .unwrap_or_else(|| panic!("expected an integer at {pointer} in {value}"))
}

fn yaml_files_under(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()))
    {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            yaml_files_under(&path, found);
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        ) {
            found.push(path);
        }
    }
}

fn configmap() -> BTreeMap<String, String> {
    let cm = doc_of_kind("deploy/k8s/configmap.yaml", "ConfigMap");
    cm["data"]
        .as_object()
        .expect("ConfigMap data")
        .iter()
        .map(|(k, v)| {
            let v = v.as_str().unwrap_or_else(|| {
                panic!("ConfigMap value of {k} must be a string (quote numbers)")
            });
            (k.clone(), v.to_owned())
        })
        .collect()
}

fn configmap_port(addr: &str) -> i64 {
    addr.rsplit_once(':')
        .and_then(|(_, port)| port.parse().ok())
        .unwrap_or_else(|| panic!("CONTACTMIRROR_METRICS_ADDR {addr:?} has no port"))
}

/// The names of the keys each Secret of the example defines.
fn example_secret_keys() -> BTreeMap<String, BTreeSet<String>> {
    yaml_docs("deploy/k8s/secret.example.yaml")
        .into_iter()
        .map(|secret| {
            assert_eq!(secret["kind"], "Secret");
            let keys = secret["stringData"]
                .as_object()
                .expect("stringData")
                .keys()
                .cloned()
                .collect();
            (str_at(&secret, "/metadata/name").to_owned(), keys)
        })
        .collect()
}

/// Every FailureReason. The match has no wildcard, so a new variant does not compile until it is listed here (and
/// then the runbook test asks for its row in deploy/README.md).
fn all_failure_reasons() -> Vec<FailureReason> {
    use FailureReason::*;
    let all = vec![
        NoMailbox,
        AccessDenied,
        Authentication,
        UnknownTenant,
        MalformedJob,
        AttemptsExhausted,
        DeletionCapExceeded,
        GraphRejected,
        NoReport,
        ThrottledTooLong,
        UntrustedJob,
        Phase1Failed,
    ];
    for reason in &all {
        match reason {
            NoMailbox | AccessDenied | Authentication | UnknownTenant | MalformedJob
            | AttemptsExhausted | DeletionCapExceeded | GraphRejected | NoReport
            | ThrottledTooLong | UntrustedJob | Phase1Failed => {}
        }
    }
    all
}

#[test]
fn every_yaml_file_parses_and_every_manifest_is_named() {
    let mut files = Vec::new();
    yaml_files_under(&repo_root().join("deploy"), &mut files);
    files.push(repo_root().join("docker-compose.yml"));
    let names: BTreeSet<String> = files
        .iter()
        .map(|p| {
            p.strip_prefix(repo_root())
                .expect("under the root")
                .display()
                .to_string()
        })
        .collect();
    for expected in [
        "docker-compose.yml",
        "deploy/k8s/kustomization.yaml",
        "deploy/k8s/namespace.yaml",
        "deploy/k8s/configmap.yaml",
        "deploy/k8s/secret.example.yaml",
        "deploy/k8s/worker-deployment.yaml",
        "deploy/k8s/worker-scaledobject.yaml",
        "deploy/k8s/producer-cronjob.yaml",
        "deploy/k8s/pdb.yaml",
    ] {
        assert!(
            names.contains(expected),
            "{expected} is missing (found {names:?})"
        );
    }
    for name in &names {
        let docs = yaml_docs(name);
        assert!(!docs.is_empty(), "{name} holds no YAML document");
        if name.starts_with("deploy/k8s/") && !name.ends_with("kustomization.yaml") {
            for doc in &docs {
                assert!(
                    doc["apiVersion"].is_string(),
                    "{name}: a document without apiVersion"
                );
                assert!(doc["kind"].is_string(), "{name}: a document without kind");
                assert!(
                    doc.pointer("/metadata/name").is_some_and(Value::is_string),
                    "{name}: a document without a name"
                );
            }
        }
    }
}

#[test]
fn kustomization_applies_every_manifest_but_the_secret_example() {
    let kustomization = &yaml_docs("deploy/k8s/kustomization.yaml")[0];
    assert_eq!(kustomization["kind"], "Kustomization");
    let resources: BTreeSet<&str> = kustomization["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .map(|r| r.as_str().expect("resource path"))
        .collect();
    let mut files = Vec::new();
    yaml_files_under(&repo_root().join("deploy/k8s"), &mut files);
    for file in files {
        let name = file
            .file_name()
            .and_then(|n| n.to_str())
            .expect("file name")
            .to_owned();
        match name.as_str() {
            "kustomization.yaml" => {}
            "secret.example.yaml" => assert!(
                !resources.contains(name.as_str()),
                "the secret example holds placeholders and must never be applied by kustomize"
            ),
            _ => assert!(
                resources.contains(name.as_str()),
                "{name} is not listed in kustomization.yaml"
            ),
        }
    }
    for resource in &resources {
        assert!(
            repo_root().join("deploy/k8s").join(resource).is_file(),
            "{resource} does not exist"
        );
    }
    let namespace = doc_of_kind("deploy/k8s/namespace.yaml", "Namespace");
    assert_eq!(kustomization["namespace"], namespace["metadata"]["name"]);
    let images = kustomization["images"].as_array().expect("images");
    let worker = doc_of_kind("deploy/k8s/worker-deployment.yaml", "Deployment");
    let image = str_at(&worker, "/spec/template/spec/containers/0/image");
    assert!(
        images.iter().any(|i| i["name"] == image),
        "kustomization.yaml does not set the image {image:?}"
    );
}

#[test]
fn secret_example_holds_placeholders_only() {
    let text = read("deploy/k8s/secret.example.yaml");
    assert!(
        text.contains("EXAMPLE ONLY"),
        "the example must say it is an example"
    );
    for secret in yaml_docs("deploy/k8s/secret.example.yaml") {
        for (key, value) in secret["stringData"].as_object().expect("stringData") {
            let value = value.as_str().expect("string value");
            assert!(
                value.contains("PLACEHOLDER"),
                "{key} of the secret example holds a non-placeholder value"
            );
        }
    }
}

#[test]
fn configmap_matches_the_code_defaults() {
    let cm = configmap();
    assert_eq!(
        cm["CONTACTMIRROR_QUEUE_PREFIX"],
        Topology::default().prefix()
    );
    assert!(
        cm["CONTACTMIRROR_CONFIG"].starts_with('/'),
        "CONTACTMIRROR_CONFIG must be an absolute path"
    );
    assert!(["human", "json"].contains(&cm["CONTACTMIRROR_LOG_FORMAT"].as_str()));
    for key in [
        "CONTACTMIRROR_CONCURRENCY",
        "CONTACTMIRROR_MAX_ATTEMPTS",
        "CONTACTMIRROR_GRACE_SECS",
    ] {
        let n: u64 = cm[key]
            .parse()
            .unwrap_or_else(|_| panic!("{key} is not a number"));
        assert!(n >= 1, "{key} must be positive");
    }
    configmap_port(&cm["CONTACTMIRROR_METRICS_ADDR"]);
    // The spare slots are the worker's default for the configured concurrency, so both move together.
    let concurrency: u16 = cm["CONTACTMIRROR_CONCURRENCY"].parse().expect("a number");
    assert_eq!(
        cm["CONTACTMIRROR_SPARE_SLOTS"],
        worker::consumer::default_spare_slots(concurrency).to_string()
    );
}

/// Resolves a probe's port (a number or a container port name) to a number.
fn probe_port(container: &Value, probe: &str) -> i64 {
    let port = &container[probe]["httpGet"]["port"];
    if let Some(number) = port.as_i64() {
        return number;
    }
    let name = port
        .as_str()
        .unwrap_or_else(|| panic!("{probe} has no port"));
    container["ports"]
        .as_array()
        .expect("container ports")
        .iter()
        .find(|p| p["name"] == name)
        .map(|p| int_at(p, "/containerPort"))
        .unwrap_or_else(|| {
            panic!("{probe} names port {name:?}, which the container does not declare")
        })
}

/// Checks what the worker and the producer pods share: non-root, read-only root, the config mounted where
/// CONTACTMIRROR_CONFIG points, the ConfigMap and the broker URL from the Secret.
fn assert_pod_wiring(what: &str, pod: &Value, container: &Value) {
    let cm_name = str_at(
        &doc_of_kind("deploy/k8s/configmap.yaml", "ConfigMap"),
        "/metadata/name",
    )
    .to_owned();
    let cm = configmap();
    let secrets = example_secret_keys();
    assert_eq!(
        pod["securityContext"]["runAsNonRoot"], true,
        "{what}: runAsNonRoot"
    );
    assert_eq!(
        int_at(pod, "/securityContext/runAsUser"),
        10001,
        "{what}: the image's uid"
    );
    assert_eq!(
        container["securityContext"]["readOnlyRootFilesystem"], true,
        "{what}: readOnlyRootFilesystem"
    );
    assert_eq!(
        container["securityContext"]["allowPrivilegeEscalation"], false,
        "{what}"
    );
    assert!(
        container["envFrom"].as_array().is_some_and(|e| e
            .iter()
            .any(|s| s["configMapRef"]["name"] == cm_name.as_str())),
        "{what} does not load the ConfigMap {cm_name}"
    );
    let amqp = container["env"]
        .as_array()
        .and_then(|env| env.iter().find(|e| e["name"] == "AMQP_URL"))
        .unwrap_or_else(|| panic!("{what} has no AMQP_URL"));
    let secret = str_at(amqp, "/valueFrom/secretKeyRef/name");
    let key = str_at(amqp, "/valueFrom/secretKeyRef/key");
    assert!(
        secrets.get(secret).is_some_and(|keys| keys.contains(key)),
        "{what}: AMQP_URL comes from {secret}/{key}, which secret.example.yaml does not define"
    );
    // The config Secret is mounted so that CONTACTMIRROR_CONFIG exists.
    let config_path = Path::new(&cm["CONTACTMIRROR_CONFIG"]);
    let dir = config_path
        .parent()
        .and_then(Path::to_str)
        .expect("config dir");
    let file = config_path
        .file_name()
        .and_then(|f| f.to_str())
        .expect("config file");
    let mount = container["volumeMounts"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["mountPath"] == dir))
        .unwrap_or_else(|| panic!("{what} mounts nothing at {dir}"));
    assert_eq!(
        mount["readOnly"], true,
        "{what}: the config mount must be read-only"
    );
    let volume = pod["volumes"]
        .as_array()
        .and_then(|v| v.iter().find(|v| v["name"] == mount["name"]))
        .unwrap_or_else(|| panic!("{what}: no volume for the config mount"));
    let secret_name = str_at(volume, "/secret/secretName");
    let keys = secrets.get(secret_name).unwrap_or_else(|| {
        panic!("{what} mounts Secret {secret_name}, which secret.example.yaml does not define")
    });
    let items = volume["secret"]["items"].as_array().expect("secret items");
    assert!(
        items
            .iter()
            .any(|i| i["path"] == file && keys.contains(str_at(i, "/key"))),
        "{what}: the config Secret does not provide {file}"
    );
}

#[test]
fn worker_deployment_probes_ports_and_shutdown_match_the_worker() {
    let deployment = doc_of_kind("deploy/k8s/worker-deployment.yaml", "Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    let containers = pod["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 1);
    let container = &containers[0];
    assert_eq!(container["command"][0], "contactmirror-worker");
    let cm = configmap();
    let metrics_port = configmap_port(&cm["CONTACTMIRROR_METRICS_ADDR"]);
    assert_eq!(metrics_port, 9090, "the worker's documented default port");
    let metrics = container["ports"]
        .as_array()
        .and_then(|ports| ports.iter().find(|p| p["name"] == "metrics"))
        .expect("a container port named `metrics`");
    assert_eq!(int_at(metrics, "/containerPort"), metrics_port);
    assert_eq!(str_at(container, "/readinessProbe/httpGet/path"), "/readyz");
    assert_eq!(str_at(container, "/livenessProbe/httpGet/path"), "/healthz");
    assert_eq!(probe_port(container, "readinessProbe"), metrics_port);
    assert_eq!(probe_port(container, "livenessProbe"), metrics_port);
    assert_eq!(
        deployment["metadata"]["annotations"].get("prometheus.io/port"),
        None,
        "scrape annotations belong on the pod template"
    );
    assert_eq!(
        deployment["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"],
        metrics_port.to_string()
    );
    // Shutdown: in-flight jobs get CONTACTMIRROR_GRACE_SECS, and Kubernetes must wait longer than that.
    let grace: i64 = cm["CONTACTMIRROR_GRACE_SECS"].parse().expect("grace secs");
    let termination = int_at(pod, "/terminationGracePeriodSeconds");
    assert!(
        termination > grace,
        "terminationGracePeriodSeconds {termination} <= CONTACTMIRROR_GRACE_SECS {grace}"
    );
    assert!(
        termination >= 120,
        "a job's normal length plus margin: at least 120 s, got {termination}"
    );
    let liveness_window = int_at(container, "/livenessProbe/periodSeconds")
        * int_at(container, "/livenessProbe/failureThreshold");
    assert!(
        liveness_window >= termination,
        "the liveness probe could restart a draining worker ({liveness_window} s < {termination} s)"
    );
    assert!(container["resources"]["requests"]["cpu"].is_string());
    assert!(container["resources"]["limits"]["memory"].is_string());
    assert_pod_wiring("worker", pod, container);
    // The selector picks the template's pods.
    let selector = deployment["spec"]["selector"]["matchLabels"]
        .as_object()
        .expect("selector");
    for (key, value) in selector {
        assert_eq!(
            &deployment["spec"]["template"]["metadata"]["labels"][key],
            value
        );
    }
}

#[test]
fn scaledobject_scales_the_worker_on_the_declared_job_queues() {
    let file = "deploy/k8s/worker-scaledobject.yaml";
    let scaled = doc_of_kind(file, "ScaledObject");
    let auth = doc_of_kind(file, "TriggerAuthentication");
    let deployment = doc_of_kind("deploy/k8s/worker-deployment.yaml", "Deployment");
    assert_eq!(str_at(&scaled, "/apiVersion"), "keda.sh/v1alpha1");
    assert_eq!(str_at(&scaled, "/spec/scaleTargetRef/kind"), "Deployment");
    assert_eq!(
        str_at(&scaled, "/spec/scaleTargetRef/apiVersion"),
        "apps/v1"
    );
    assert_eq!(
        str_at(&scaled, "/spec/scaleTargetRef/name"),
        str_at(&deployment, "/metadata/name"),
        "the ScaledObject must scale the worker Deployment"
    );
    let topology = Topology::default();
    // Every queue the code declares, so a pattern that also matched a dead-letter or retry queue shows.
    let declared = topology.all_queues();
    let triggers = scaled["spec"]["triggers"].as_array().expect("triggers");
    let mut watched = BTreeSet::new();
    for trigger in triggers {
        assert_eq!(trigger["type"], "rabbitmq");
        let metadata = trigger["metadata"].as_object().expect("trigger metadata");
        for (key, value) in metadata {
            assert!(
                value.is_string(),
                "KEDA trigger metadata {key} must be a string, got {value}"
            );
        }
        assert_eq!(
            metadata["protocol"], "http",
            "http, so unacked (running) jobs count"
        );
        assert_ne!(metadata.get("excludeUnacknowledged"), Some(&json!("true")));
        assert_eq!(metadata["mode"], "QueueLength");
        assert_eq!(metadata["vhostName"], "/");
        let value: f64 = metadata["value"]
            .as_str()
            .and_then(|v| v.parse().ok())
            .expect("numeric value");
        assert!(value > 0.0);
        assert!(
            !metadata.contains_key("host"),
            "credentials belong in the TriggerAuthentication"
        );
        assert_eq!(
            trigger["authenticationRef"]["name"],
            auth["metadata"]["name"]
        );
        // A phase's lanes are added up: each lane holds one run's share of the phase's backlog.
        assert_eq!(metadata["useRegex"], "true");
        assert_eq!(metadata["operation"], "sum");
        let pattern = metadata["queueName"].as_str().expect("queueName");
        let pattern = regex::Regex::new(pattern).expect("queueName is a regular expression");
        let matched: BTreeSet<String> = declared
            .iter()
            .filter(|queue| pattern.is_match(queue))
            .cloned()
            .collect();
        let phase = Phase::ALL
            .into_iter()
            .find(|phase| matched.contains(&topology.job_queue(*phase)))
            .unwrap_or_else(|| panic!("{pattern} watches no phase's first lane"));
        assert_eq!(
            matched,
            topology.lane_queues(phase).into_iter().collect(),
            "{pattern} must watch exactly {phase}'s lanes"
        );
        watched.insert(phase);
    }
    assert_eq!(
        watched,
        Phase::ALL.into_iter().collect(),
        "the triggers must watch both phases' job queues"
    );
    // The management URL comes from a Secret key the example defines.
    let secrets = example_secret_keys();
    let refs = auth["spec"]["secretTargetRef"]
        .as_array()
        .expect("secretTargetRef");
    let host = refs
        .iter()
        .find(|r| r["parameter"] == "host")
        .expect("a `host` parameter");
    assert!(
        secrets
            .get(str_at(host, "/name"))
            .is_some_and(|keys| keys.contains(str_at(host, "/key"))),
        "the TriggerAuthentication reads a Secret key that secret.example.yaml does not define"
    );
    // Bounded, and the bound explained.
    let min = int_at(&scaled, "/spec/minReplicaCount");
    let max = int_at(&scaled, "/spec/maxReplicaCount");
    assert!(min >= 0 && max >= min.max(1), "min {min}, max {max}");
    assert!(
        max <= 50,
        "maxReplicaCount {max}: Graph's per-mailbox limits make that many workers useless"
    );
    let text = read(file);
    for needle in [
        "maxReplicaCount",
        "4 requests in flight",
        "10,000 requests per 10 minutes",
        "per app",
    ] {
        assert!(
            text.contains(needle),
            "{file} no longer explains the replica bound ({needle:?})"
        );
    }
}

#[test]
fn producer_cronjob_never_overlaps_and_runs_the_producer() {
    let cron = doc_of_kind("deploy/k8s/producer-cronjob.yaml", "CronJob");
    assert_eq!(cron["spec"]["concurrencyPolicy"], "Forbid");
    assert!(cron["spec"]["schedule"].is_string());
    let pod = &cron["spec"]["jobTemplate"]["spec"]["template"]["spec"];
    assert_eq!(pod["restartPolicy"], "Never");
    let container = &pod["containers"][0];
    let command: Vec<&str> = container["command"]
        .as_array()
        .expect("command")
        .iter()
        .chain(container["args"].as_array().into_iter().flatten())
        .map(|c| c.as_str().expect("string"))
        .collect();
    assert_eq!(&command[..2], ["contactmirror-producer", "run"]);
    assert_pod_wiring("producer", pod, container);
}

#[test]
fn producer_keeps_its_state_on_the_claim_the_manifests_define() {
    let claim = doc_of_kind(
        "deploy/k8s/producer-state-pvc.yaml",
        "PersistentVolumeClaim",
    );
    let cron = doc_of_kind("deploy/k8s/producer-cronjob.yaml", "CronJob");
    let pod = &cron["spec"]["jobTemplate"]["spec"]["template"]["spec"];
    let volume = pod["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find(|v| v["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"])
        .expect("the CronJob mounts the state claim");
    let container = &pod["containers"][0];
    let mount = container["volumeMounts"]
        .as_array()
        .expect("volumeMounts")
        .iter()
        .find(|m| m["name"] == volume["name"])
        .expect("the state volume is mounted");
    let state_dir = container["env"]
        .as_array()
        .expect("env")
        .iter()
        .find(|e| e["name"] == "CONTACTMIRROR_STATE_DIR")
        .expect("CONTACTMIRROR_STATE_DIR is set");
    assert_eq!(state_dir["value"], mount["mountPath"]);
    assert_ne!(mount["readOnly"], true, "the state must be writable");
    // The variable is the one the producer reads.
    let cli = read("producer/src/cli.rs");
    assert!(cli.contains("env = \"CONTACTMIRROR_STATE_DIR\""));
}

#[test]
fn pdb_covers_the_worker_pods() {
    let pdb = doc_of_kind("deploy/k8s/pdb.yaml", "PodDisruptionBudget");
    let deployment = doc_of_kind("deploy/k8s/worker-deployment.yaml", "Deployment");
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    let selector = pdb["spec"]["selector"]["matchLabels"]
        .as_object()
        .expect("matchLabels");
    assert!(!selector.is_empty());
    for (key, value) in selector {
        assert_eq!(
            &labels[key], value,
            "the PDB selects {key}={value}, which worker pods do not carry"
        );
    }
    assert!(
        pdb["spec"].get("maxUnavailable").is_some() || pdb["spec"].get("minAvailable").is_some(),
        "a PDB needs maxUnavailable or minAvailable"
    );
}

#[test]
fn rabbitmq_definitions_hold_exactly_what_declare_creates() {
    let definitions: Value = serde_json::from_str(&read("deploy/rabbitmq/definitions.json"))
        .expect("definitions.json is JSON");
    let topology = Topology::default();
    let vhosts: Vec<&str> = definitions["vhosts"]
        .as_array()
        .expect("vhosts")
        .iter()
        .map(|v| str_at(v, "/name"))
        .collect();
    assert_eq!(vhosts, ["/"]);
    for section in ["queues", "exchanges", "bindings"] {
        for object in definitions[section].as_array().expect(section) {
            assert_eq!(object["vhost"], "/", "{section}: {object}");
        }
    }

    // Queues: same names, durability and arguments, nothing more.
    let specs = queue_arguments(&topology);
    let queues: BTreeMap<&str, &Value> = definitions["queues"]
        .as_array()
        .expect("queues")
        .iter()
        .map(|q| (str_at(q, "/name"), q))
        .collect();
    let spec_names: BTreeSet<&str> = specs.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(queues.keys().copied().collect::<BTreeSet<_>>(), spec_names);
    for name in topology.all_queues() {
        assert!(
            queues.contains_key(name.as_str()),
            "definitions.json lacks queue {name}"
        );
    }
    for spec in &specs {
        let queue = queues[spec.name.as_str()];
        assert_eq!(queue["durable"], spec.durable, "{}", spec.name);
        assert_eq!(queue["auto_delete"], false, "{}", spec.name);
        assert_eq!(
            queue["arguments"], spec.arguments,
            "arguments of {}",
            spec.name
        );
        if let Some(kind) = queue.get("type") {
            assert_eq!(
                Some(kind),
                spec.arguments.get("x-queue-type"),
                "{}",
                spec.name
            );
        }
    }

    // Exchanges: same names and kinds, all durable.
    let declared: BTreeMap<String, &str> = exchanges(&topology)
        .into_iter()
        .map(|e| {
            assert!(e.durable);
            (e.name, e.kind.as_str())
        })
        .collect();
    let defined: BTreeMap<String, &str> = definitions["exchanges"]
        .as_array()
        .expect("exchanges")
        .iter()
        .map(|e| {
            assert_eq!(e["durable"], true, "{e}");
            assert_eq!(e["auto_delete"], false, "{e}");
            assert_eq!(e["internal"], false, "{e}");
            assert!(
                e["arguments"].as_object().is_some_and(|a| a.is_empty()),
                "{e}"
            );
            (str_at(e, "/name").to_owned(), str_at(e, "/type"))
        })
        .collect();
    assert_eq!(defined, declared);

    // Bindings: exactly the (exchange, queue, routing key) triples of the specs.
    let expected: BTreeSet<(String, String, String)> = specs
        .iter()
        .flat_map(|s| {
            s.bindings
                .iter()
                .map(|b| (b.exchange.clone(), s.name.clone(), b.routing_key.clone()))
        })
        .collect();
    let bindings = definitions["bindings"].as_array().expect("bindings");
    let found: BTreeSet<(String, String, String)> = bindings
        .iter()
        .map(|b| {
            assert_eq!(b["destination_type"], "queue", "{b}");
            (
                str_at(b, "/source").to_owned(),
                str_at(b, "/destination").to_owned(),
                str_at(b, "/routing_key").to_owned(),
            )
        })
        .collect();
    assert_eq!(found.len(), bindings.len(), "duplicate bindings");
    assert_eq!(found, expected);
}

#[test]
fn queue_specs_agree_with_the_topology_helpers() {
    // The specs `declare` uses route jobs, retries and dead letters the way the rest of the code expects.
    let topology = Topology::default();
    let specs = queue_arguments(&topology);
    for phase in [Phase::Phase1, Phase::Phase2] {
        let dead = specs
            .iter()
            .find(|s| s.name == topology.dead_letter_queue(phase))
            .expect("dead-letter queue");
        for lane in Lane::all() {
            let job = specs
                .iter()
                .find(|s| s.name == topology.lane_queue(phase, lane))
                .expect("job queue");
            assert_eq!(job.bindings[0].exchange, topology.jobs_exchange());
            assert_eq!(job.bindings[0].routing_key, lane.routing_key(phase));
            assert_eq!(
                job.arguments["x-dead-letter-exchange"],
                topology.dead_letter_exchange()
            );
            assert!(dead.bindings.iter().any(|binding| binding.exchange
                == topology.dead_letter_exchange()
                && binding.routing_key == lane.routing_key(phase)));
        }
        assert_eq!(dead.bindings.len(), usize::from(Lane::COUNT));
    }
    for level in shared::mq::RETRY_LEVELS {
        let retry = specs
            .iter()
            .find(|s| s.name == topology.retry_queue(level))
            .expect("retry queue");
        assert_eq!(
            retry.arguments["x-message-ttl"],
            json!(level.as_millis() as u64)
        );
        assert_eq!(
            retry.arguments["x-dead-letter-exchange"],
            topology.jobs_exchange()
        );
    }
}

#[test]
fn compose_runs_the_services_the_readme_names() {
    let compose = &yaml_docs("docker-compose.yml")[0];
    let services = compose["services"].as_object().expect("services");
    let names: BTreeSet<&str> = services.keys().map(String::as_str).collect();
    for name in ["rabbitmq", "graphsim", "worker", "producer"] {
        assert!(
            names.contains(name),
            "docker-compose.yml has no `{name}` service"
        );
    }

    let rabbitmq = &services["rabbitmq"];
    assert!(
        str_at(rabbitmq, "/image").starts_with("rabbitmq:3.10"),
        "RabbitMQ 3.10"
    );
    assert!(
        str_at(rabbitmq, "/image").contains("management"),
        "the management plugin"
    );
    assert!(
        rabbitmq["healthcheck"]["test"].is_array(),
        "rabbitmq needs a healthcheck"
    );
    let ports: Vec<&str> = rabbitmq["ports"]
        .as_array()
        .expect("rabbitmq ports")
        .iter()
        .map(|p| p.as_str().expect("port mapping"))
        .collect();
    for port in [":5672", ":15672"] {
        assert!(
            ports.iter().any(|p| p.ends_with(port)),
            "rabbitmq does not publish {port}"
        );
    }

    // The worker must scale with `--scale worker=N`: no fixed name, no fixed host port.
    let worker = &services["worker"];
    assert!(
        worker.get("container_name").is_none(),
        "a container_name prevents --scale"
    );
    assert!(
        worker.get("ports").is_none(),
        "a fixed host port prevents --scale"
    );
    let worker_command = worker["command"].as_array().expect("worker command");
    assert_eq!(worker_command[0], "contactmirror-worker");
    for service in ["worker", "producer"] {
        let env = services[service]["environment"]
            .as_object()
            .expect("environment");
        assert_eq!(
            env["CONTACTMIRROR_ALLOW_INSECURE_GRAPH"], "1",
            "{service}: graphsim is plain http"
        );
        let url = env["AMQP_URL"].as_str().expect("AMQP_URL");
        assert!(
            url.starts_with("amqp://") && url.contains("@rabbitmq:5672"),
            "{service}: {url}"
        );
        assert_eq!(
            env["CONTACTMIRROR_QUEUE_PREFIX"],
            Topology::default().prefix()
        );
        let depends = services[service]["depends_on"]
            .as_object()
            .expect("depends_on");
        assert_eq!(
            depends["rabbitmq"]["condition"], "service_healthy",
            "{service}"
        );
        let build = &services[service]["build"];
        assert!(
            repo_root().join(str_at(build, "/dockerfile")).is_file(),
            "{service}: no such Dockerfile"
        );
    }
    let graphsim = services["graphsim"]["command"]
        .as_array()
        .expect("graphsim command");
    assert_eq!(graphsim[0], "graphsim");
    assert!(
        graphsim.iter().any(|a| a == "--seed-users"),
        "graphsim must seed an estate"
    );

    // The producer is one-shot and runs `run`.
    let producer = &services["producer"];
    assert!(producer.get("profiles").is_some() || producer["restart"] == "no");
    let mut producer_command: Vec<&str> = Vec::new();
    for part in [&producer["entrypoint"], &producer["command"]] {
        producer_command.extend(
            part.as_array()
                .into_iter()
                .flatten()
                .map(|c| c.as_str().expect("string")),
        );
    }
    assert_eq!(&producer_command[..2], ["contactmirror-producer", "run"]);

    // The config the compose services mount exists and points every tenant at graphsim.
    let mount = producer["volumes"]
        .as_array()
        .and_then(|v| {
            v.iter()
                .filter_map(Value::as_str)
                .find(|v| v.contains("config.json"))
        })
        .expect("the producer mounts a config.json");
    let host_path = mount.split(':').next().expect("host path");
    assert_eq!(host_path, "./deploy/compose/config.json");
    let config: Value =
        serde_json::from_str(&read("deploy/compose/config.json")).expect("config.json is JSON");
    let tenants = config["MicrosoftTenants"]
        .as_array()
        .expect("MicrosoftTenants");
    assert!(!tenants.is_empty());
    for tenant in tenants {
        for key in [
            "TenantId",
            "ClientId",
            "ClientSecret",
            "GlobalAddressBookUserId",
        ] {
            assert!(tenant[key].is_string(), "compose config lacks {key}");
        }
        assert_eq!(tenant["GraphEndpoint"], "http://graphsim:8080");
        assert_eq!(tenant["AuthorityHost"], "http://graphsim:8080");
    }

    // The commands the READMEs give match the file.
    let readme = read("deploy/README.md");
    assert!(readme.contains("docker compose up -d --build --scale worker="));
    assert!(readme.contains("docker compose run --rm producer"));
    let compose_text = read("docker-compose.yml");
    assert!(
        compose_text.contains("--scale worker="),
        "docker-compose.yml should say how to scale"
    );
}

#[test]
fn dockerfile_builds_the_three_binaries_into_a_non_root_image() {
    let dockerfile = read("deploy/Dockerfile");
    assert!(dockerfile.contains("FROM rust:1.95-bookworm AS builder"));
    assert!(dockerfile.contains("FROM debian:bookworm-slim"));
    assert!(dockerfile.contains("cargo build --release --locked"));
    assert!(dockerfile.contains("ca-certificates"));
    assert!(dockerfile.contains("--uid 10001"));
    assert!(dockerfile.contains("USER 10001:10001"));
    assert!(
        !dockerfile.contains("ARG CLIENT_SECRET")
            && !dockerfile.to_lowercase().contains("clientsecret")
    );
    for (package, manifest, binary) in [
        (
            "contactmirror-producer",
            "producer/Cargo.toml",
            "contactmirror-producer",
        ),
        (
            "contactmirror-worker",
            "worker/Cargo.toml",
            "contactmirror-worker",
        ),
        ("graphsim", "graphsim/Cargo.toml", "graphsim"),
    ] {
        assert!(
            dockerfile.contains(&format!("-p {package}")),
            "the image does not build {package}"
        );
        assert!(
            dockerfile.contains(&format!("target/release/{binary}")),
            "the image does not ship {binary}"
        );
        let cargo = read(manifest);
        assert!(
            cargo.contains(&format!("name = \"{package}\"")),
            "{manifest} is not package {package}"
        );
        assert!(
            cargo.contains(&format!("name = \"{binary}\"")),
            "{manifest} builds no binary {binary}"
        );
    }
}

#[test]
fn runbook_covers_every_dead_letter_reason_and_the_tools() {
    let readme = read("deploy/README.md");
    let mut reasons: Vec<&str> = all_failure_reasons()
        .into_iter()
        .map(FailureReason::as_str)
        .collect();
    reasons.push("delivery_limit");
    for reason in reasons {
        assert!(
            readme.contains(&format!("| `{reason}`")),
            "deploy/README.md has no runbook row for the dead-letter reason `{reason}`"
        );
    }
    for needle in [
        "x-cm-reason",
        "x-first-death-reason",
        "contactmirror-producer status",
        "dlq list",
        "dlq show",
        "dlq requeue",
        "dlq purge",
        "## Install order",
        "## Scaling",
        "### Alerts",
    ] {
        assert!(
            readme.contains(needle),
            "deploy/README.md does not mention {needle:?}"
        );
    }
    let cm = configmap();
    assert!(
        readme.contains(&format!(
            "`CONTACTMIRROR_GRACE_SECS` ({})",
            cm["CONTACTMIRROR_GRACE_SECS"]
        )),
        "deploy/README.md quotes a grace period other than the ConfigMap's"
    );
}

#[test]
fn rabbitmq_definitions_keep_dead_letters_for_a_bounded_time_by_policy() {
    let definitions: Value = serde_json::from_str(&read("deploy/rabbitmq/definitions.json"))
        .expect("definitions.json is JSON");
    let policy = dead_letter_policy(&Topology::default());
    let policies = definitions["policies"].as_array().expect("policies");
    assert_eq!(policies.len(), 1, "{policies:?}");
    let defined = &policies[0];
    assert_eq!(defined["vhost"], "/");
    assert_eq!(defined["name"], policy.name.as_str());
    assert_eq!(defined["pattern"], policy.pattern.as_str());
    assert_eq!(defined["apply-to"], policy.apply_to);
    assert_eq!(defined["priority"], policy.priority);
    assert_eq!(defined["definition"], policy.definition);
}

/// The worker's job slots are named in five places that only work in step (issue 13): the worker's default
/// concurrency K, the ConfigMap's and docker-compose's `CONTACTMIRROR_CONCURRENCY` (K), the KEDA triggers (phase 1:
/// one worker per K jobs; phase 2: per 2K, K running and about K waiting each) and the producer's per-tenant limit
/// (CronJob and code default: twice the largest pool's slots, 2 x `maxReplicaCount` x K, so a lone tenant's depth
/// reaches the pool's maximum). Passes on the code before issue 13 too (K = 4: 4, 8 and 128); fails when one of
/// them moves alone, as raising the default to 32 with the phase-2 trigger left at 8 did while this was written.
#[test]
fn worker_slots_the_triggers_and_the_tenant_limit_are_in_step() {
    let k = i64::from(worker::consumer::DEFAULT_CONCURRENCY);
    let number = |what: &str, text: &str| -> i64 {
        text.parse()
            .unwrap_or_else(|_| panic!("{what} {text:?} is not a number"))
    };
    let cm = configmap();
    assert_eq!(
        number(
            "the ConfigMap's concurrency",
            &cm["CONTACTMIRROR_CONCURRENCY"]
        ),
        k,
        "the ConfigMap's CONTACTMIRROR_CONCURRENCY is not the worker's default"
    );
    let compose = &yaml_docs("docker-compose.yml")[0];
    let compose_k = str_at(
        compose,
        "/services/worker/environment/CONTACTMIRROR_CONCURRENCY",
    );
    assert_eq!(number("docker-compose's concurrency", compose_k), k);

    let scaled = doc_of_kind("deploy/k8s/worker-scaledobject.yaml", "ScaledObject");
    let topology = Topology::default();
    let triggers = scaled["spec"]["triggers"].as_array().expect("triggers");
    for (phase, per_worker) in [(Phase::Phase1, k), (Phase::Phase2, 2 * k)] {
        let queue = topology.job_queue(phase);
        let trigger = triggers
            .iter()
            .find(|t| {
                t["metadata"]["queueName"]
                    .as_str()
                    .and_then(|pattern| regex::Regex::new(pattern).ok())
                    .is_some_and(|pattern| pattern.is_match(&queue))
            })
            .unwrap_or_else(|| panic!("no trigger watches {queue}"));
        let value = str_at(trigger, "/metadata/value");
        assert_eq!(
            number("a trigger value", value),
            per_worker,
            "the {queue} trigger asks for one worker per {value} jobs, not {per_worker}"
        );
    }

    let max = int_at(&scaled, "/spec/maxReplicaCount");
    let cron = doc_of_kind("deploy/k8s/producer-cronjob.yaml", "CronJob");
    let env = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .expect("the producer's env");
    let tenant_jobs = env
        .iter()
        .find(|e| e["name"] == "CONTACTMIRROR_TENANT_JOBS")
        .map(|e| str_at(e, "/value"))
        .expect("the CronJob sets CONTACTMIRROR_TENANT_JOBS");
    let expected = 2 * max * k;
    assert_eq!(number("CONTACTMIRROR_TENANT_JOBS", tenant_jobs), expected);
    assert_eq!(
        i64::try_from(producer::fair::BROKER_PER_TENANT.get()).expect("fits"),
        expected,
        "the producer's default per-tenant limit is not the CronJob's"
    );
}
