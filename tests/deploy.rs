//! The Kubernetes manifests under deploy/k8s parse, are wired together (headless Service ↔ pod
//! labels, seeds ↔ pod DNS names and ports, secret volume ↔ --secret-file), and only use
//! options `ringrun launch` has; and they agree with the Dockerfile that builds their image
//! (its name, what its final stage holds at the paths they run, what crosses between its
//! stages) and the Dockerfile with README's install commands. No image can be built where the
//! tests run, so the Dockerfile is read as text.

use std::process::Command;

use yaml_rust2::{Yaml, YamlLoader};

#[path = "deploy/files.rs"]
mod files;

use files::{Stage, absolute, dockerfile_stages, dockerignore, exists, ignored, read, toml_str};

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

/// The manifests' worker containers, by file.
fn containers() -> Vec<(&'static str, Yaml)> {
    [
        ("statefulset.yaml", "StatefulSet"),
        ("indexed-job.yaml", "Job"),
    ]
    .into_iter()
    .map(|(file, kind)| {
        let docs = load(file);
        let pod = of_kind(&docs, kind)["spec"]["template"]["spec"].clone();
        (file, pod["containers"][0].clone())
    })
    .collect()
}

/// The image tag the Dockerfile documents (`docker build -t TAG .`), its build and runtime
/// stages.
fn image() -> (String, Stage, Stage) {
    let text = read("Dockerfile");
    let tag = text
        .lines()
        .find_map(|l| l.split_once("docker build -t ").map(|(_, rest)| rest))
        .and_then(|rest| rest.split_whitespace().next())
        .expect("Dockerfile: a `docker build -t TAG .` line")
        .to_string();
    let mut stages = dockerfile_stages(&text).into_iter();
    let (build, runtime) = (stages.next().unwrap(), stages.next().unwrap());
    assert!(
        stages.next().is_none(),
        "Dockerfile: a build and a runtime stage"
    );
    assert_eq!(build.name.as_deref(), Some("build"), "Dockerfile");
    (tag, build, runtime)
}

fn has_command(stage: &Stage, prefix: &[String]) -> bool {
    stage.commands().iter().any(|c| c.starts_with(prefix))
}

fn words(line: &str) -> Vec<String> {
    line.split_whitespace().map(str::to_string).collect()
}

#[test]
fn the_manifests_run_the_image_the_dockerfile_builds() {
    let (tag, _, _) = image();
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        tag,
        format!("ringrun:{version}"),
        "Dockerfile: tagged with the crates' version"
    );
    let pyproject = read("python/pyproject.toml");
    assert_eq!(
        toml_str(&pyproject, "[project]", "version").as_deref(),
        Some(version)
    );
    assert!(
        read("README.md").contains(&format!("docker build -t {tag} .")),
        "README builds the image under the same name"
    );
    for (file, container) in containers() {
        assert_eq!(container["image"].as_str(), Some(tag.as_str()), "{file}");
    }
}

#[test]
fn the_build_stage_has_the_pinned_toolchain_and_the_runtime_the_same_debian() {
    let (_, build, runtime) = image();
    let channel = toml_str(&read("rust-toolchain.toml"), "[toolchain]", "channel").unwrap();
    let suite = build
        .from
        .strip_prefix(&format!("rust:{channel}-"))
        .unwrap_or_else(|| panic!("build stage FROM {}: not rust:{channel}-*", build.from));
    let python = runtime
        .from
        .strip_prefix("python:")
        .expect("runtime FROM python:*");
    assert!(
        python.ends_with(&format!("-slim-{suite}")),
        "runtime FROM {}: a slim image of {suite}, whose glibc the binaries were linked with",
        runtime.from
    );
}

#[test]
fn the_dockerfile_installs_with_the_readme_commands() {
    let (_, build, runtime) = image();
    let readme = files::readme_pip_commands();
    let find = |what: &str| {
        readme
            .iter()
            .find(|c| c[..2].join(" ") == what)
            .unwrap_or_else(|| panic!("README: no `{what}`"))
    };
    assert!(
        readme.contains(&words("pip install ./python")),
        "README: {readme:?}"
    );
    let wheel = find("pip wheel");
    let install = readme
        .iter()
        .find(|c| c[1] == "install" && c.last().unwrap().ends_with(".whl"))
        .expect("README: pip install of the wheel");
    assert!(
        has_command(&build, wheel),
        "build stage: no `{}`",
        wheel.join(" ")
    );
    assert!(
        has_command(&runtime, install),
        "runtime: no `{}`",
        install.join(" ")
    );
    // The wheel folder the runtime installs from is the one the build wrote, copied across.
    let out = &wheel[wheel
        .iter()
        .position(|w| w == "-w")
        .expect("pip wheel -w DIR")
        + 1];
    let built = absolute(&build.workdir(), out);
    let wanted = absolute(&runtime.workdir(), install.last().unwrap());
    let wanted_dir = wanted.rsplit_once('/').unwrap().0;
    assert!(
        runtime.copies().iter().any(|(from, src, dst)| {
            from.as_deref() == Some("build")
                && src.trim_end_matches('/') == built
                && absolute(&runtime.workdir(), dst).trim_end_matches('/') == wanted_dir
        }),
        "runtime: no COPY --from=build {built}/ to {wanted_dir}/"
    );
}

#[test]
fn what_the_runtime_copies_is_what_the_build_produces() {
    let (_, build, runtime) = image();
    let src = build.workdir();
    assert!(
        build.all("COPY").any(|c| c == ". ."),
        "build stage: COPY . . into {src}"
    );
    let target = build
        .all("ENV")
        .find_map(|e| e.strip_prefix("CARGO_TARGET_DIR="))
        .map_or(format!("{src}/target"), str::to_string);
    let ffi = read("ffi/Cargo.toml");
    assert!(
        toml_str(&ffi, "[lib]", "crate-type")
            .unwrap()
            .contains("cdylib")
    );
    let lib = toml_str(&ffi, "[lib]", "name").unwrap();
    let bin = toml_str(&read("launcher/Cargo.toml"), "[[bin]]", "name").unwrap();
    let out = build.commands().into_iter().find_map(|c| {
        let w = c.iter().position(|w| w == "-w")?;
        (c[..2] == ["pip", "wheel"]).then(|| absolute(&src, &c[w + 1]))
    });
    let produced = [
        out.expect("build stage: pip wheel -w DIR"),
        format!("{target}/release/lib{lib}.so"),
        format!("{target}/release/{bin}"),
    ];
    let ignore = dockerignore();
    let in_context = |rel: &str| exists(rel) && !ignored(&ignore, rel);
    for (from, path, _) in runtime.copies() {
        let path = path.trim_end_matches('/').to_string();
        match from.as_deref() {
            Some("build") => assert!(
                produced.contains(&path)
                    || path
                        .strip_prefix(&format!("{src}/"))
                        .is_some_and(in_context),
                "COPY --from=build {path}: not built there nor a file of the build context"
            ),
            None => assert!(in_context(&path), "COPY {path}: not in the build context"),
            Some(other) => panic!("COPY --from={other}: no such stage"),
        }
    }
    // The build's inputs reach the context; the multi-GiB outputs do not.
    let members = read("Cargo.toml");
    let members = members
        .lines()
        .find_map(|l| l.trim().strip_prefix("members = "))
        .expect("workspace members");
    let inputs = [
        "Cargo.toml",
        "Cargo.lock",
        "rust-toolchain.toml",
        "python/setup.py",
    ];
    for rel in inputs.into_iter().chain(
        members
            .trim_matches(['[', ']'])
            .split(',')
            .map(|m| m.trim().trim_matches('"')),
    ) {
        assert!(in_context(rel), ".dockerignore leaves out {rel}");
    }
    for rel in ["target/release/ringrun", ".git/HEAD", "python/build/lib"] {
        assert!(ignored(&ignore, rel), ".dockerignore lets {rel} in");
    }
}

#[test]
fn the_runtime_checks_it_can_run_what_the_manifests_run() {
    let (_, _, runtime) = image();
    for (file, container) in containers() {
        let command: Vec<&str> = container["command"]
            .as_vec()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap())
            .collect();
        assert_eq!(command, ["/bin/sh", "-c"], "{file}");
        let script = words(container["args"][0].as_str().unwrap());
        assert_eq!(script[..3], ["exec", "ringrun", "launch"], "{file}");
        // The image runs `ringrun launch` from PATH when it is built.
        assert!(
            has_command(&runtime, &words("ringrun launch --help")),
            "Dockerfile"
        );
        let dashes = script.iter().position(|w| w == "--").unwrap();
        let (program, args) = (&script[dashes + 1], &script[dashes + 2..]);
        assert!(
            runtime
                .commands()
                .iter()
                .any(|c| c.first() == Some(program)),
            "{file} runs {program}: the Dockerfile's final stage never does"
        );
        for path in args.iter().filter(|a| a.starts_with('/')) {
            assert!(
                has_command(&runtime, &words(&format!("test -f {path}"))),
                "{file} runs {path}: the image does not check it has it"
            );
            assert!(
                runtime
                    .copies()
                    .iter()
                    .any(|(_, _, dst)| absolute(&runtime.workdir(), dst) == *path),
                "{file} runs {path}: nothing is copied there"
            );
        }
    }
}
