//! deploy/kubernetes/: what can be checked without a cluster. The manifests parse and
//! fit together (selectors, ports, the ConfigMap mounted as a directory so updates
//! reach the pods), the embedded config passes `portcullis check`, and the probes hit
//! what the real binary serves at its default status port.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::process::GatewayProcess;
use serde_json::Value;
use std::path::PathBuf;
use std::time::Duration;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes")
}

/// Every document of every manifest named by kustomization.yaml.
fn manifests() -> Vec<Value> {
    let kust: Value =
        serde_saphyr::from_str(&std::fs::read_to_string(dir().join("kustomization.yaml")).unwrap())
            .expect("kustomization.yaml parses");
    let mut docs = Vec::new();
    for r in kust["resources"].as_array().expect("resources") {
        let file = dir().join(r.as_str().unwrap());
        let text =
            std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let parsed: Vec<Value> = serde_saphyr::from_multiple(&text)
            .unwrap_or_else(|e| panic!("{} does not parse: {e}", file.display()));
        docs.extend(parsed.into_iter().filter(|d| !d.is_null()));
    }
    docs
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} '{name}'"))
}

fn env<'a>(container: &'a Value, name: &str) -> &'a str {
    container["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
        .unwrap_or_else(|| panic!("env {name} not set"))["value"]
        .as_str()
        .unwrap()
}

/// The binary's default for `--status-listen`, from its own help text.
fn default_status_port() -> u16 {
    let out = GatewayProcess::bin()
        .args(["run", "--help"])
        .finish(Duration::from_secs(20));
    let help = out.stdout.join("\n");
    let at = help
        .find("--status-listen")
        .expect("--status-listen in help");
    let rest = &help[at..];
    let d = &rest[rest.find("[default: ").expect("a default") + 10..];
    let addr: std::net::SocketAddr = d[..d.find(']').unwrap()].parse().unwrap();
    addr.port()
}

#[test]
fn manifests_fit_together() {
    let docs = manifests();
    let deploy = find(&docs, "Deployment", "portcullis");
    let spec = &deploy["spec"];
    assert!(spec["replicas"].as_u64().unwrap() >= 2);
    let labels = &spec["template"]["metadata"]["labels"];
    assert_eq!(spec["selector"]["matchLabels"], *labels);
    let pod = &spec["template"]["spec"];
    let c = &pod["containers"][0];

    // The status listener must be reachable by the kubelet, on the default port.
    let status_port = default_status_port();
    let listen: std::net::SocketAddr = env(c, "PORTCULLIS_STATUS_LISTEN").parse().unwrap();
    assert!(listen.ip().is_unspecified(), "bound to every interface");
    assert_eq!(listen.port(), status_port);
    assert_eq!(c["readinessProbe"]["httpGet"]["port"], status_port);
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/health");
    assert_eq!(c["livenessProbe"]["tcpSocket"]["port"], status_port);

    // Graceful drain: the grace period covers the preStop pause and the drain timeout.
    let drain: u64 = env(c, "PORTCULLIS_DRAIN_TIMEOUT").parse().unwrap();
    let pause: u64 = c["lifecycle"]["preStop"]["exec"]["command"][1]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(pod["terminationGracePeriodSeconds"].as_u64().unwrap() > drain + pause);
    assert!(c["resources"]["requests"]["memory"].is_string());

    // The ConfigMap is mounted as a directory (a subPath mount never sees updates) and
    // PORTCULLIS_CONFIG names its key there.
    let mount = &c["volumeMounts"][0];
    assert!(mount.get("subPath").is_none());
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap();
    let cm_name = volume["configMap"]["name"].as_str().unwrap();
    let cm = find(&docs, "ConfigMap", cm_name);
    let config_path = env(c, "PORTCULLIS_CONFIG");
    let key = config_path
        .strip_prefix(&format!("{}/", mount["mountPath"].as_str().unwrap()))
        .expect("PORTCULLIS_CONFIG inside the mount");
    assert!(cm["data"][key].is_string(), "ConfigMap key {key}");

    // Service and PodDisruptionBudget select the pods; target ports exist.
    let svc = find(&docs, "Service", "portcullis");
    for (k, v) in svc["spec"]["selector"].as_object().unwrap() {
        assert_eq!(labels[k], *v);
    }
    let names: Vec<&str> = c["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    for p in svc["spec"]["ports"].as_array().unwrap() {
        assert!(names.contains(&p["targetPort"].as_str().unwrap()), "{p}");
    }
    let pdb = find(&docs, "PodDisruptionBudget", "portcullis");
    assert_eq!(pdb["spec"]["selector"]["matchLabels"], *labels);
    assert!(pdb["spec"]["minAvailable"].as_u64().unwrap() < spec["replicas"].as_u64().unwrap());

    // The rate-limiting plugin points at the Redis Service of redis.yaml.
    let gateway: Value = serde_saphyr::from_str(cm["data"][key].as_str().unwrap()).unwrap();
    let rl = gateway["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "rate-limiting")
        .expect("a rate-limiting plugin");
    let host = rl["config"]["redis"]["host"].as_str().unwrap();
    let redis_svc = find(&docs, "Service", host);
    assert_eq!(
        redis_svc["spec"]["ports"][0]["port"],
        rl["config"]["redis"]["port"]
    );
}

#[tokio::test]
async fn embedded_config_checks_and_probes_answer() {
    let docs = manifests();
    let cm = find(&docs, "ConfigMap", "portcullis-config");
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("gateway.yaml");
    std::fs::write(&file, cm["data"]["gateway.yaml"].as_str().unwrap()).unwrap();
    let out = GatewayProcess::bin()
        .arg("check")
        .config_file(&file)
        .finish(Duration::from_secs(20));
    assert!(
        out.status.success(),
        "portcullis check failed:\n{}{}",
        out.stdout.join("\n"),
        out.stderr
    );

    // The real binary on that config: the readiness path answers 200 on the status
    // listener, and the liveness port accepts.
    let deploy = find(&docs, "Deployment", "portcullis");
    let c = &deploy["spec"]["template"]["spec"]["containers"][0];
    let path = c["readinessProbe"]["httpGet"]["path"].as_str().unwrap();
    let gw = GatewayProcess::run()
        .env("PORTCULLIS_CONFIG", &file)
        .env("PORTCULLIS_LISTEN", "127.0.0.1:0")
        .env("PORTCULLIS_TLS_LISTEN", "off")
        .env("PORTCULLIS_STATUS_LISTEN", "127.0.0.1:0")
        .discard_stdout()
        .start();
    let r = common::get(gw.status_addr(), path).await;
    drop(gw);
    assert_eq!(r.status, 200, "{path}: {}", r.text());
}
