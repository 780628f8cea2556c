//! The rewrite, table-driven: torchrun's and horovodrun's lines as their documentation shows
//! them, and ringrun's own lines, which pass through unchanged.

use super::*;

fn native() -> Native {
    use clap::Args;
    native_options(&crate::launch::LaunchCmd::augment_args(clap::Command::new(
        "launch",
    )))
}

fn facts_with<R>(gpus: usize, f: impl FnOnce(&Facts) -> R) -> R {
    let is_local = |h: &str| matches!(h, "localhost" | "127.0.0.1" | "node1" | "10.0.0.2");
    let route_from = |h: &str| -> Option<IpAddr> {
        match h {
            "node0" | "10.0.0.1" | "node1" => Some([10, 0, 0, 2].into()),
            "127.0.0.1" | "localhost" => Some([127, 0, 0, 1].into()),
            _ => None,
        }
    };
    let read = |p: &str| match p {
        "hosts.txt" => Ok("# two hosts\nnode0 slots=2\nnode1 slots=2\n".to_string()),
        _ => Err(format!("{p}: no such file")),
    };
    f(&Facts {
        python: "py".into(),
        cpus: 8,
        gpus,
        is_local: &is_local,
        route_from: &route_from,
        read: &read,
    })
}

fn run(line: &str, gpus: usize) -> Result<Rewritten, String> {
    let args: Vec<String> = line.split_whitespace().map(str::to_string).collect();
    facts_with(gpus, |f| rewrite(&args, &native(), f))
}

/// (torchrun / horovodrun line, ringrun line).
const SAME_AS: &[(&str, &str)] = &[
    // torchrun, one host.
    (
        "--nproc-per-node 4 train.py --lr 0.1",
        "--nproc-per-node 4 -- py -u train.py --lr 0.1",
    ),
    (
        "--nproc_per_node=2 train.py --nproc_per_node 3 -m x",
        "--nproc-per-node 2 -- py -u train.py --nproc_per_node 3 -m x",
    ),
    (
        "--standalone --nnodes=1 --nproc-per-node=2 train.py",
        "--nnodes 1 --nproc-per-node 2 -- py -u train.py",
    ),
    (
        "--standalone --nproc_per_node 2 --rdzv-endpoint node0:29400 train.py",
        "--nproc-per-node 2 -- py -u train.py",
    ),
    (
        "--nproc-per-node auto train.py",
        "--nproc-per-node 8 -- py -u train.py",
    ),
    (
        "--nproc-per-node cpu -- train.py",
        "--nproc-per-node 8 -- py -u train.py",
    ),
    (
        "-m --nproc-per-node 2 pkg.train --epochs 3",
        "--nproc-per-node 2 -- py -u -m pkg.train --epochs 3",
    ),
    (
        "--module --nproc_per_node=2 -- pkg.train",
        "--nproc-per-node 2 -- py -u -m pkg.train",
    ),
    (
        "--no-python --nproc-per-node 2 ./train.sh --x",
        "--nproc-per-node 2 -- ./train.sh --x",
    ),
    (
        "--no_python --nproc-per-node 2 -- run.py 1",
        "--nproc-per-node 2 -- run.py 1",
    ),
    (
        "--run-path --nproc-per-node 1 train",
        "--nproc-per-node 1 -- py -u train",
    ),
    (
        "--nnodes 1 --master-addr 127.0.0.1 --master_port=29511 train.py",
        "--nnodes 1 --master-addr 127.0.0.1 --master-port 29511 -- py -u train.py",
    ),
    (
        "--rdzv_id=job7 --max_restarts=2 --log_dir=/tmp/l -r 3 -t3 --local_ranks_filter=0 x.py",
        "--run-id job7 --max-restarts 2 --log-dir /tmp/l --redirects 3 --tee 3 \
         --local-ranks-filter 0 -- py -u x.py",
    ),
    (
        "--nproc 2 --monitor-interval 1 --start_method=fork --role trainer x.py",
        "--nproc-per-node 2 -- py -u x.py",
    ),
    // torchrun, several hosts: the endpoint is the seed, the port the launchers' port.
    (
        "--nnodes=2 --node-rank=1 --rdzv-backend=c10d --rdzv-endpoint=node0:29400 train.py",
        "--nnodes 2 --node-rank 1 --seeds node0:29400 --port 29400 --bind 10.0.0.2 \
         --master-addr node0 --master-port 29400 -- py -u train.py",
    ),
    (
        "--nnodes 2 --node_rank 0 --master_addr 10.0.0.1 --master_port 1234 --local-addr 10.0.0.1 t.py",
        "--nnodes 2 --node-rank 0 --seeds 10.0.0.1:1234 --port 1234 --bind 10.0.0.1 \
         --master-addr 10.0.0.1 --master-port 1234 -- py -u t.py",
    ),
    (
        "--nnodes=1:4 --nproc-per-node=2 --rdzv-id=j --rdzv-backend=c10d \
         --rdzv-endpoint=127.0.0.1 train.py",
        "--nnodes 1:4 --run-id j --nproc-per-node 2 --seeds 127.0.0.1:29400 --port 29400 \
         --bind 127.0.0.1 --node-rank 0 --master-addr 127.0.0.1 --master-port 29400 \
         -- py -u train.py",
    ),
    // ringrun's own line passes through.
    (
        "--np 4 --seeds a:1 --mode restart -- python train.py --np 9",
        "--np 4 --seeds a:1 --mode restart -- python train.py --np 9",
    ),
    // horovodrun.
    (
        "-np 4 python train.py",
        "--nproc-per-node 4 -- python train.py",
    ),
    (
        "-np 2 -H localhost:4 --verbose --disable-cache python train.py",
        "--nproc-per-node 2 -- python train.py",
    ),
    (
        "-np 4 -H node0:2,node1:2 python train.py",
        "--nproc-per-node 2 --seeds node0:29450,node1:29450 --port 29450 --bind 10.0.0.2 \
         --node-rank 1 --nnodes 2 -- python train.py",
    ),
    (
        "-np 4 -H 127.0.0.1:2,127.0.0.2:2 --bind 127.0.0.2 python train.py",
        "--bind 127.0.0.2 --nproc-per-node 2 --seeds 127.0.0.1:29450,127.0.0.2:29450 \
         --port 29450 --node-rank 1 --nnodes 2 -- python train.py",
    ),
    (
        "-np=4 --hostfile hosts.txt --port 7000 python train.py",
        "--port 7000 --nproc-per-node 2 --seeds node0:7000,node1:7000 --bind 10.0.0.2 \
         --node-rank 1 --nnodes 2 -- python train.py",
    ),
    (
        "-np 2 --min-np 1 --max-np 4 --host-discovery-script ./d.sh --slots-per-host 2 \
         --reset-limit 5 --blacklist-cooldown-range 10 100 --start-timeout 60 python t.py",
        "--min-np 1 --max-np 4 --host-discovery-script ./d.sh --slots-per-host 2 \
         --start-timeout 60 --max-restarts 5 -- python t.py",
    ),
    (
        "-np 2 --host-discovery-script ./d.sh python t.py",
        "--host-discovery-script ./d.sh --min-np 2 -- python t.py",
    ),
    (
        "-np 1 --gloo --fusion-threshold-mb 32 -p 22 --output-filename /tmp/o python t.py",
        "--log-dir /tmp/o --nproc-per-node 1 -- python t.py",
    ),
];

#[test]
fn torchrun_and_horovodrun_lines_become_ringrun_lines() {
    for (line, want) in SAME_AS {
        let got = run(line, 0).unwrap_or_else(|e| panic!("{line}: {e}"));
        let want: Vec<&str> = want.split_whitespace().collect();
        assert_eq!(got.args, want, "{line}");
    }
}

#[test]
fn ignored_options_are_named_on_stderr() {
    let r = run(
        "--monitor_interval=5 --numa-binding node -np 1 --gloo python t.py",
        0,
    )
    .unwrap();
    assert_eq!(r.notes.len(), 3, "{:?}", r.notes);
    assert!(r.notes[0].starts_with("--monitor-interval accepted and ignored"));
    assert!(r.notes[2].starts_with("--gloo accepted and ignored"));
    assert!(r.changed);
    let own = run("--np 2 -- python t.py", 0).unwrap();
    assert!(own.notes.is_empty() && !own.changed);
    assert!(run("--verbose -np 1 python t.py", 0).unwrap().verbose);
}

#[test]
fn nproc_per_node_gpu_and_auto_count_gpus() {
    assert_eq!(run("--nproc-per-node gpu t.py", 2).unwrap().args[1], "2");
    assert_eq!(run("--nproc-per-node auto t.py", 2).unwrap().args[1], "2");
    let e = run("--nproc-per-node gpu t.py", 0).unwrap_err();
    assert!(e.contains("no GPU"), "{e}");
}

/// (line, words the error must contain).
const REFUSED: &[(&str, &str)] = &[
    (
        "--rdzv-backend etcd --rdzv-endpoint h:2379 t.py",
        "use --rdzv-backend c10d",
    ),
    ("--rdzv_backend=etcd-v2 t.py", "etcd"),
    ("--rdzv-backend zookeeper t.py", "expected c10d or static"),
    ("-m --no-python x", "cannot be used together"),
    (
        "--nproc-per-node many t.py",
        "expected a number, auto, cpu or gpu",
    ),
    ("--nnodes 2 --rdzv-endpoint node0:1 t.py", "--node-rank"),
    ("--nnodes 1:x t.py", "MIN:MAX"),
    ("-np 4 -H node0:2,node2:2 python t.py", "none of the hosts"),
    (
        "-np 2 -H node0:2,node1:2 python t.py",
        "no worker runs here",
    ),
    ("-np 9 -H localhost:4 python t.py", "only 4 slot"),
    ("-np 2 --hostfile nope python t.py", "no such file"),
    ("--rdzv-endpoint", "needs 1 value"),
];

#[test]
fn lines_ringrun_cannot_honour_are_refused_with_the_reason() {
    for (line, words) in REFUSED {
        let e = run(line, 0).expect_err(line);
        assert!(e.contains(words), "{line}: {e}");
    }
}

#[test]
fn host_lists_and_files_parse() {
    assert_eq!(
        hosts::parse_hosts("a:2,b,c:4").unwrap(),
        vec![("a".into(), 2), ("b".into(), 1), ("c".into(), 4)]
    );
    assert!(hosts::parse_hosts("a:x").is_err());
    assert_eq!(
        hosts::parse_hostfile("a slots=3\n\n# c\nb\n").unwrap(),
        vec![("a".into(), 3), ("b".into(), 1)]
    );
    assert_eq!(split_host_port("[::1]:7", 1).unwrap(), ("::1".into(), 7));
    assert_eq!(split_host_port("h", 29400).unwrap(), ("h".into(), 29400));
}
