//! The Kubernetes manifests under deploy/k8s parse, are wired together (headless Service ↔ pod
//! labels, seeds ↔ pod DNS names and ports, secret volume ↔ --secret-file), and only use
//! options `ringrun launch` has.

use std::process::Command;

use yaml_rust2::{Yaml, YamlLoader};

const EXE: &str = env!("CARGO_BIN_EXE_ringrun");

fn load(name: &str) -> Vec<Yaml> {
    let path = format!("{}/../deploy/k8s/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap();
    YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn of_kind<'a>(docs: &'a [Yaml], kind: &str) -> &'a Yaml {
    docs.iter()
        .find(|d| d["kind"].as_str() == Some(kind))
        .unwrap_or_else(|| panic!("no {kind}"))
}

/// The `--flag value` pairs of the container's `ringrun launch` command line.
fn launch_flags(container: &Yaml) -> Vec<(String, String)> {
    let script = container["args"][0].as_str().unwrap();
    let words: Vec<&str> = script.split_whitespace().collect();
    let start = words
        .iter()
        .position(|w| *w == "launch")
        .expect("ringrun launch")
        + 1;
    let end = words
        .iter()
        .position(|w| *w == "--")
        .expect("-- before the command");
    words[start..end]
        .chunks(2)
        .map(|p| {
            (
                p[0].to_string(),
                p.get(1).unwrap_or(&"").trim_matches('"').to_string(),
            )
        })
        .collect()
}

fn check(
    file: &str,
    workload: &str,
    name: &str,
    replicas: i64,
    pod_spec: &Yaml,
    seed_name: impl Fn(i64) -> String,
) {
    let docs = load(file);
    let service = of_kind(&docs, "Service");
    assert_eq!(
        service["spec"]["clusterIP"].as_str(),
        Some("None"),
        "{file}: headless"
    );
    let port = service["spec"]["ports"][0]["port"].as_i64().unwrap();
    let container = &pod_spec["containers"][0];
    let flags = launch_flags(container);
    let flag = |f: &str| flags.iter().find(|(k, _)| k == f).map(|(_, v)| v.clone());
    assert_eq!(flag("--port"), Some(port.to_string()), "{file}");
    let seeds: Vec<String> = (0..replicas)
        .map(|i| format!("{}:{port}", seed_name(i)))
        .collect();
    assert_eq!(
        flag("--seeds"),
        Some(seeds.join(",")),
        "{file}: {workload} {name}"
    );
    let secret_mount = container["volumeMounts"]
        .as_vec()
        .unwrap()
        .iter()
        .find(|m| m["name"].as_str() == Some("secret"))
        .unwrap();
    let secret_file = flag("--secret-file").unwrap();
    assert!(
        secret_file.starts_with(secret_mount["mountPath"].as_str().unwrap()),
        "{file}"
    );
    let help = Command::new(EXE)
        .args(["launch", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for (f, _) in &flags {
        assert!(
            help.contains(f.as_str()),
            "{file}: ringrun launch has no {f}"
        );
    }
}

#[test]
fn the_statefulset_is_wired_to_its_headless_service() {
    let docs = load("statefulset.yaml");
    let sts = of_kind(&docs, "StatefulSet");
    let service = of_kind(&docs, "Service");
    let name = sts["metadata"]["name"].as_str().unwrap();
    let svc = service["metadata"]["name"].as_str().unwrap();
    assert_eq!(sts["spec"]["serviceName"].as_str(), Some(svc));
    let labels = &sts["spec"]["template"]["metadata"]["labels"];
    for (k, v) in service["spec"]["selector"].as_hash().unwrap() {
        assert_eq!(&labels[k.as_str().unwrap()], v, "selector matches the pods");
    }
    let replicas = sts["spec"]["replicas"].as_i64().unwrap();
    check(
        "statefulset.yaml",
        "StatefulSet",
        name,
        replicas,
        &sts["spec"]["template"]["spec"],
        |i| format!("{name}-{i}.{svc}"),
    );
}

#[test]
fn the_indexed_job_is_wired_to_its_headless_service() {
    let docs = load("indexed-job.yaml");
    let job = of_kind(&docs, "Job");
    let service = of_kind(&docs, "Service");
    assert_eq!(job["spec"]["completionMode"].as_str(), Some("Indexed"));
    let name = job["metadata"]["name"].as_str().unwrap();
    let svc = service["metadata"]["name"].as_str().unwrap();
    let pod = &job["spec"]["template"]["spec"];
    assert_eq!(
        pod["subdomain"].as_str(),
        Some(svc),
        "pods get <job>-<index>.<service> names"
    );
    let completions = job["spec"]["completions"].as_i64().unwrap();
    check("indexed-job.yaml", "Job", name, completions, pod, |i| {
        format!("{name}-{i}.{svc}")
    });
}
