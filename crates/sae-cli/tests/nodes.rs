//! `sae train` on several machines (`distributed.nodes`), here processes on this machine
//! meeting at `sae orchestrator` on localhost: the machines train the model one machine trains
//! with as many devices, bit for bit; machines that differ in settings are refused; a machine
//! that dies stops the others within the timeout, and the run resumes; an orchestrator that
//! stops after the machines met leaves the run going, and one orchestrator serves launch
//! after launch.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// A port nothing listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process, killed when dropped (a failing test leaves nothing running).
struct Running(Option<Child>);

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Running {
    /// Waits at most `limit` for the process to end: its success and its output.
    fn finish(mut self, limit: Duration) -> (bool, String) {
        let start = Instant::now();
        let mut child = self.0.take().expect("running");
        while child.try_wait().unwrap().is_none() {
            if start.elapsed() > limit {
                let _ = child.kill();
                let out = child.wait_with_output().unwrap();
                panic!("still running after {limit:?}: a hang\n{}", text(&out));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = child.wait_with_output().unwrap();
        (out.status.success(), text(&out))
    }

    /// Kills the process (an orchestrator runs until stopped): what it printed.
    fn stop(mut self) -> String {
        let mut child = self.0.take().expect("running");
        let _ = child.kill();
        text(&child.wait_with_output().unwrap())
    }
}

fn spawn(args: &[String]) -> Running {
    Running(Some(
        Command::new(SAE)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the sae binary starts"),
    ))
}

/// An orchestrator on a free port, and its address.
fn orchestrator() -> (Running, String) {
    let port = free_port();
    let running = spawn(&["orchestrator".into(), "--port".into(), port.to_string()]);
    // Until it listens, the machines' registration would fail.
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(start.elapsed() < Duration::from_secs(30), "no orchestrator");
        std::thread::sleep(Duration::from_millis(20));
    }
    (running, format!("ws://127.0.0.1:{port}"))
}

/// Machine `node`'s flags in a run of machines meeting at `orchestrator`.
fn node_flags(node: usize, orchestrator: &str) -> Vec<String> {
    vec![
        "--node".into(),
        node.to_string(),
        "--node-address".into(),
        format!("ws://127.0.0.1:{}", free_port()),
        "--orchestrator".into(),
        orchestrator.into(),
    ]
}

/// Starts machines `0..nodes` of a run in `dirs`, each `small_run(dir, steps, extra)` and
/// then its machine's `extra_per_node`.
fn machines(
    dirs: &[&Path],
    steps: u64,
    extra: &[&str],
    orchestrator: &str,
    per_node: impl Fn(usize) -> Vec<String>,
) -> Vec<Running> {
    let nodes = format!("distributed.nodes={}", dirs.len());
    dirs.iter()
        .enumerate()
        .map(|(node, dir)| {
            let mut extra: Vec<&str> = extra.to_vec();
            extra.extend(["--set", &nodes]);
            let mut args = small_run(dir, steps, &extra);
            args.extend(node_flags(node, orchestrator));
            args.extend(per_node(node));
            spawn(&args)
        })
        .collect()
}

const LIMIT: Duration = Duration::from_secs(300);

#[test]
fn two_machines_train_the_model_one_machine_with_two_devices_trains() {
    let tmp = tempfile::tempdir().unwrap();
    // One orchestrator serves both launches.
    let (_orchestrator, at) = orchestrator();
    for rule in ["mutual_choice", "feature_choice"] {
        let name = format!("sparsifier.name=\"{rule}\"");
        let one = tmp.path().join(format!("{rule}-one"));
        let out = run(&small_run(
            &one,
            20,
            &["--set", &name, "--set", "distributed.devices=2"],
        ));
        assert!(out.status.success(), "{}", text(&out));
        let dirs = [
            tmp.path().join(format!("{rule}-node0")),
            tmp.path().join(format!("{rule}-node1")),
        ];
        let dirs: Vec<&Path> = dirs.iter().map(|d| d.as_path()).collect();
        for (node, m) in machines(&dirs, 20, &["--set", &name], &at, |_| vec![])
            .into_iter()
            .enumerate()
        {
            let (ok, message) = m.finish(LIMIT);
            assert!(ok, "{rule}: machine {node}: {message}");
        }
        // Two peers sum two addends, which is exact in any order: the same bits, for the
        // parameters, the feature densities and the inference thresholds (all in the file).
        assert!(weights(dirs[0]) == weights(&one), "{rule}: machine 0");
        assert!(weights(dirs[1]) == weights(&one), "{rule}: machine 1");
    }
}

/// Two machines on wgpu (lavapipe where there is no GPU), each one peer running the device
/// step on its half of every batch, end in the evaluation of one machine with two wgpu peers.
/// (Each process tunes burn's GEMM on its own, so the bits may differ.)
#[test]
fn two_wgpu_machines_end_in_the_evaluation_of_one_machine_with_two_devices() {
    let tmp = tempfile::tempdir().unwrap();
    let (_orchestrator, at) = orchestrator();
    let extra = [
        "--set",
        "sparsifier.name=\"feature_choice\"",
        "--set",
        "backend=\"wgpu\"",
    ];
    let one = tmp.path().join("one");
    let mut args = extra.to_vec();
    args.extend(["--set", "distributed.devices=2"]);
    if on_wgpu(&small_run(&one, 20, &args)).is_none() {
        return;
    }
    let dirs = [tmp.path().join("node0"), tmp.path().join("node1")];
    let dirs: Vec<&Path> = dirs.iter().map(|d| d.as_path()).collect();
    for (node, m) in machines(&dirs, 20, &extra, &at, |_| vec![])
        .into_iter()
        .enumerate()
    {
        let (ok, message) = m.finish(LIMIT);
        assert!(ok, "machine {node}: {message}");
    }
    assert_same_evaluation("machine 0 of two on wgpu", dirs[0], &one);
    assert_same_evaluation("machine 1 of two on wgpu", dirs[1], &one);
}

/// Two machines with two devices each (four peers: each machine sums its own two, then the
/// machines sum theirs) train the model one machine with four devices trains, within the
/// tolerance of a different order of the sums.
#[test]
fn two_machines_of_two_devices_train_the_four_device_model() {
    let tmp = tempfile::tempdir().unwrap();
    let name = "sparsifier.name=\"topk\"";
    let one = tmp.path().join("one");
    let out = run(&small_run(
        &one,
        20,
        &["--set", name, "--set", "distributed.devices=4"],
    ));
    assert!(out.status.success(), "{}", text(&out));
    let (_orchestrator, at) = orchestrator();
    let dirs = [tmp.path().join("node0"), tmp.path().join("node1")];
    let dirs: Vec<&Path> = dirs.iter().map(|d| d.as_path()).collect();
    let extra = ["--set", name, "--set", "distributed.devices=2"];
    for (node, m) in machines(&dirs, 20, &extra, &at, |_| vec![])
        .into_iter()
        .enumerate()
    {
        let (ok, message) = m.finish(LIMIT);
        assert!(ok, "machine {node}: {message}");
    }
    assert!(weights(dirs[0]) == weights(dirs[1]), "the machines differ");
    assert_same_evaluation("two machines of two devices", dirs[0], &one);
}

/// Three machines add in the ring of burn-collective's global all-reduce, whose order follows
/// the machines' ids; the orchestrator numbers them by their peers, not by the order they
/// registered in, so two launches in opposite orders end in the same bits.
#[test]
fn three_machines_repeat_bit_for_bit_whatever_order_they_start_in() {
    let tmp = tempfile::tempdir().unwrap();
    let extra = ["--set", "sparsifier.name=\"mutual_choice\""];
    let mut models = Vec::new();
    for (launch, order) in [[0, 1, 2], [2, 1, 0]].into_iter().enumerate() {
        let (_orchestrator, at) = orchestrator();
        let dirs: Vec<_> = (0..3)
            .map(|node| tmp.path().join(format!("launch{launch}-node{node}")))
            .collect();
        let mut running: Vec<(usize, Running)> = Vec::new();
        for node in order {
            let mut args = small_run(&dirs[node], 20, &extra);
            args.extend(["--set".into(), "distributed.nodes=3".into()]);
            args.extend(node_flags(node, &at));
            running.push((node, spawn(&args)));
            // Each machine registers before the next one starts.
            std::thread::sleep(Duration::from_millis(500));
        }
        for (node, m) in running {
            let (ok, message) = m.finish(LIMIT);
            assert!(ok, "launch {launch}, machine {node}: {message}");
        }
        let held: Vec<_> = dirs.iter().map(|d| weights(d)).collect();
        assert!(
            held.iter().all(|w| *w == held[0]),
            "launch {launch}: the machines differ"
        );
        models.push(held[0].clone());
    }
    assert!(models[0] == models[1], "the launches differ");
}

/// A machine whose partners never come waits the join timeout, not the sums' (here ten
/// minutes), then stops asking whether all machines are started, before any step.
#[test]
fn a_machine_alone_stops_after_the_join_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let (_orchestrator, at) = orchestrator();
    let dir = tmp.path().join("node0");
    let settings = [
        "--set",
        "distributed.nodes=2",
        "--set",
        "distributed.timeout_seconds=600",
        "--set",
        "distributed.join_timeout_seconds=2",
    ];
    let mut args = small_run(&dir, 20, &settings);
    args.extend(node_flags(0, &at));
    let alone = spawn(&args);
    let started = Instant::now();
    let (ok, message) = alone.finish(LIMIT);
    let took = started.elapsed();
    assert!(!ok, "machine 0 trained alone");
    assert!(
        message.contains("did not register within 2s") && message.contains("are all 2 machines"),
        "{message}"
    );
    assert!(took < Duration::from_secs(60), "stopped after {took:?}");
    assert!(!dir.join("metrics.jsonl").exists(), "a step ran");
}

/// Machines that do not hold the same run stop before any step, every one naming what
/// differs; flags that do not fit the settings are refused before anything starts.
#[test]
fn machines_that_differ_are_refused_naming_what_differs() {
    let tmp = tempfile::tempdir().unwrap();
    let (_orchestrator, at) = orchestrator();
    let dirs = [tmp.path().join("node0"), tmp.path().join("node1")];
    let dirs: Vec<&Path> = dirs.iter().map(|d| d.as_path()).collect();
    let per_node = |node: usize| match node {
        1 => vec!["--set".to_string(), "train.log_every_steps=7".into()],
        _ => vec![],
    };
    for (node, m) in machines(&dirs, 20, &[], &at, per_node)
        .into_iter()
        .enumerate()
    {
        let (ok, message) = m.finish(LIMIT);
        assert!(!ok, "machine {node} trained");
        assert!(
            message.contains("differ in the settings [train]") && message.contains("[1]"),
            "machine {node}: {message}"
        );
        assert!(!dirs[node].join("metrics.jsonl").exists(), "machine {node}");
    }

    let dir = tmp.path().join("refused");
    // A port another process listens on.
    let taken = std::net::TcpListener::bind(("0.0.0.0", 0)).unwrap();
    let taken_address = format!("ws://127.0.0.1:{}", taken.local_addr().unwrap().port());
    // Machine `node` of two, reached at `address`.
    let one_of_two = |node: &'static str, address: &str| {
        vec![
            "--set".to_string(),
            "distributed.nodes=2".into(),
            "--node".into(),
            node.into(),
            "--node-address".into(),
            address.into(),
            "--orchestrator".into(),
            at.clone(),
        ]
    };
    let owned = |args: &[&str]| args.iter().map(|a| a.to_string()).collect::<Vec<_>>();
    for (extra, expected) in [
        (
            owned(&["--set", "distributed.nodes=2"]),
            "needs this machine's --node",
        ),
        (
            owned(&[
                "--node",
                "0",
                "--node-address",
                "ws://127.0.0.1:9",
                "--orchestrator",
                &at,
            ]),
            "distributed.nodes = 1",
        ),
        (
            one_of_two("2", "ws://127.0.0.1:9"),
            "--node 2 is not a machine",
        ),
        (one_of_two("1", "127.0.0.1:9"), "expected ws://HOST:PORT"),
        (
            one_of_two("1", &taken_address),
            "this machine cannot serve on that port",
        ),
    ] {
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let out = run(&small_run(&dir, 20, &extra));
        assert!(!out.status.success(), "{extra:?} was accepted");
        let message = text(&out);
        assert!(message.contains(expected), "{extra:?}: {message}");
        assert!(!dir.join("metrics.jsonl").exists(), "{extra:?}: trained");
    }
}

/// A machine killed mid-run stops the other within the timeout, with an error naming the
/// peer that did not come; both machines then resume from a checkpoint they both hold and end
/// with the model an uninterrupted run trains, bit for bit.
#[test]
fn a_machine_that_dies_stops_the_other_within_the_timeout_and_the_run_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let TwoMachines {
        whole,
        dirs,
        orchestrator: orchestrator_process,
        at,
        mut running,
    } = two_machines_past_a_checkpoint(tmp.path(), 300);
    let dirs: Vec<&Path> = dirs.iter().map(|d| d.as_path()).collect();
    let (second, first) = (running.pop().unwrap(), running.pop().unwrap());
    drop(second); // SIGKILL
    let killed = Instant::now();
    let (ok, message) = first.finish(LIMIT);
    let took = killed.elapsed();
    assert!(!ok, "machine 0 went on alone");
    // The engine's transfer from the dead machine breaks, which names it, or the sum waits
    // out the timeout, which names the peers of the other machines.
    assert!(
        message.contains("the transfer from machine 1 (peers [1]) broke")
            || message.contains("peers [1] of the other machines"),
        "{message}"
    );
    // The engine reports the loss as an error, not as a panic of its tasks.
    assert!(!message.contains("panicked"), "{message}");
    assert!(
        took < Duration::from_secs(30),
        "machine 0 stopped after {took:?}"
    );
    assert!(
        !dirs[0].join("model").exists(),
        "machine 0 finished the run alone"
    );

    // The machines agree on the checkpoint to resume; the orchestrator of the failed launch
    // has forgotten it and serves this one.
    resume_to_the_end(&dirs, orchestrator_process, &at);
    assert!(weights(dirs[0]) == weights(&whole), "machine 0");
    assert!(weights(dirs[1]) == weights(&whole), "machine 1");
}

/// The orchestrator is the machines' meeting point, not part of their sums: once they have
/// met, it may stop, and the run ends as if it had not (no panic when the machines unregister
/// from an orchestrator that is gone).
#[test]
fn an_orchestrator_that_stops_after_the_machines_met_does_not_stop_the_run() {
    let tmp = tempfile::tempdir().unwrap();
    let started = two_machines_past_a_checkpoint(tmp.path(), 300);
    drop(started.orchestrator); // SIGKILL
    for (node, m) in started.running.into_iter().enumerate() {
        let (ok, message) = m.finish(LIMIT);
        assert!(ok, "machine {node}: {message}");
        assert!(!message.contains("panicked"), "machine {node}: {message}");
    }
    for (node, dir) in started.dirs.iter().enumerate() {
        assert!(weights(dir) == weights(&started.whole), "machine {node}");
    }
}

/// The machines of a launch that come while another launch runs at the same orchestrator
/// wait for it to end, then train their own run: neither launch takes in the other's
/// machines.
#[test]
fn a_launch_that_comes_while_another_runs_waits_for_it() {
    let tmp = tempfile::tempdir().unwrap();
    let next_whole = tmp.path().join("next");
    std::fs::create_dir_all(&next_whole).unwrap();
    let next_whole = uninterrupted(&next_whole, 20);
    let mut first = two_machines_past_a_checkpoint(tmp.path(), 1000);
    let next = [tmp.path().join("next0"), tmp.path().join("next1")];
    let next: Vec<&Path> = next.iter().map(|d| d.as_path()).collect();
    let waiting = machines(&next, 20, &[], &first.at, |_| vec![]);
    // Time for the next launch's machines to start and register while the first still runs.
    std::thread::sleep(Duration::from_secs(1));
    for (node, m) in first.running.iter_mut().enumerate() {
        let child = m.0.as_mut().expect("running");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the first launch ended before the next one came: run it longer (machine {node})"
        );
    }
    for (node, m) in first.running.into_iter().enumerate() {
        let (ok, message) = m.finish(LIMIT);
        assert!(ok, "first launch, machine {node}: {message}");
    }
    for (node, m) in waiting.into_iter().enumerate() {
        let (ok, message) = m.finish(LIMIT);
        assert!(ok, "next launch, machine {node}: {message}");
    }
    for (node, (dir, next_dir)) in first.dirs.iter().zip(&next).enumerate() {
        assert!(
            weights(dir) == weights(&first.whole),
            "first launch, machine {node}"
        );
        assert!(
            weights(next_dir) == weights(&next_whole),
            "next launch, machine {node}"
        );
    }
}

/// Two machines of a run meeting at their own orchestrator, both past their first checkpoint.
struct TwoMachines {
    /// The model the run ends with when nothing stops it ([`uninterrupted`]).
    whole: PathBuf,
    /// The machines' run directories.
    dirs: [PathBuf; 2],
    orchestrator: Running,
    /// The orchestrator's address.
    at: String,
    /// The machines, in order.
    running: Vec<Running>,
}

/// Starts the `steps`-step small run on two machines under `tmp` (a 5 s timeout for the
/// sums; the machines of a launch, resumes included, wait a minute for each other to join,
/// however slowly a busy machine starts them) and waits until both have written a checkpoint.
fn two_machines_past_a_checkpoint(tmp: &Path, steps: u64) -> TwoMachines {
    let whole = uninterrupted(tmp, steps);
    let dirs = [tmp.join("node0"), tmp.join("node1")];
    let (orchestrator, at) = orchestrator();
    let settings = [
        "--set",
        "distributed.timeout_seconds=5",
        "--set",
        "distributed.join_timeout_seconds=60",
    ];
    let paths: Vec<&Path> = dirs.iter().map(|d| d.as_path()).collect();
    let running = machines(&paths, steps, &settings, &at, |_| vec![]);
    wait_for_checkpoints(&paths);
    TwoMachines {
        whole,
        dirs,
        orchestrator,
        at,
        running,
    }
}

/// The model of `steps` steps of the small run on one machine with two devices, trained
/// without interruption in `tmp/uninterrupted`.
fn uninterrupted(tmp: &Path, steps: u64) -> PathBuf {
    let whole = tmp.join("uninterrupted");
    let out = run(&small_run(
        &whole,
        steps,
        &["--set", "distributed.devices=2"],
    ));
    assert!(out.status.success(), "{}", text(&out));
    whole
}

/// Waits until every machine of `dirs` has written a checkpoint.
fn wait_for_checkpoints(dirs: &[&Path]) {
    let start = Instant::now();
    while dirs.iter().any(|dir| checkpoints(dir).is_empty()) {
        assert!(start.elapsed() < LIMIT, "no checkpoint");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Resumes the run of `dirs` on as many machines, meeting at `orchestrator` (listening at
/// `at`), to its end. A failure shows what every machine and the orchestrator printed: the
/// machine that failed first is not always the one whose message says why.
fn resume_to_the_end(dirs: &[&Path], orchestrator: Running, at: &str) {
    let resumed: Vec<Running> = dirs
        .iter()
        .enumerate()
        .map(|(node, dir)| {
            let flags = node_flags(node, at);
            let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
            spawn(&resume_args(dir, &flags))
        })
        .collect();
    let ended: Vec<(bool, String)> = resumed.into_iter().map(|m| m.finish(LIMIT)).collect();
    if ended.iter().all(|(ok, _)| *ok) {
        return;
    }
    let mut report = String::new();
    for (node, (ok, message)) in ended.iter().enumerate() {
        report += &format!("machine {node} resuming (success: {ok}):\n{message}\n");
    }
    report += &format!("orchestrator:\n{}", orchestrator.stop());
    panic!("{report}");
}

/// Ctrl-C (or a scheduler's SIGTERM) on one machine stops every machine at the same step, each
/// with a checkpoint of the same state; the run then resumes to the uninterrupted run's bits.
#[test]
fn a_signal_to_one_machine_stops_every_machine_at_the_same_step() {
    let tmp = tempfile::tempdir().unwrap();
    let steps = 400;
    let whole = uninterrupted(tmp.path(), steps);

    let dirs = [tmp.path().join("node0"), tmp.path().join("node1")];
    let dirs: Vec<&Path> = dirs.iter().map(|d| d.as_path()).collect();
    let (orchestrator, at) = orchestrator();
    let mut running = machines(&dirs, steps, &[], &at, |_| vec![]);
    wait_for_checkpoints(&dirs);
    signal(running[1].0.as_ref().unwrap(), "INT");
    let mut stopped_at = Vec::new();
    for (node, m) in running.drain(..).enumerate() {
        let (ok, message) = m.finish(LIMIT);
        assert!(ok, "machine {node}: {message}");
        assert!(message.contains("interrupted"), "machine {node}: {message}");
        let newest = checkpoints(dirs[node]).pop().expect("a checkpoint");
        stopped_at.push(newest.file_name().unwrap().to_owned());
    }
    assert_eq!(
        stopped_at[0], stopped_at[1],
        "the machines stopped at different steps"
    );
    assert!(
        weights(dirs[0]) == weights(dirs[1]),
        "the partial models differ"
    );
    assert!(
        weights(dirs[0]) != weights(&whole),
        "the run was not interrupted"
    );

    // The launch that ended serves the next one from the same orchestrator.
    resume_to_the_end(&dirs, orchestrator, &at);
    assert!(weights(dirs[0]) == weights(&whole), "machine 0");
    assert!(weights(dirs[1]) == weights(&whole), "machine 1");
}
