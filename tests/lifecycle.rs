//! The plugin's life: kubelet restarts, socket deletion, dropped streams, absent kubelet, stale sockets,
//! signals and the command line. Real binary, fake kubelet, real Unix sockets in temp dirs.

mod common;

use common::{command, sockets, wait_until, Plugin, Rig, WAIT};
use k8s_accelerator_devplugin::sim::{Behavior, FakeKubelet, SimNode, TempDir};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::time::{Duration, Instant};

const SOCKET: &str = "k8s-accel-b-com.com_accelerator.sock";

fn aws_plugin(dir: &std::path::Path, node: &SimNode, extra: &[&str]) -> Plugin {
    let mut args = vec!["--backend", "aws", "--accel-nbunits", "2"];
    args.extend_from_slice(extra);
    Plugin::spawn_on(dir, &node.sysfs(), &node.dev(), &args)
}

#[test]
fn every_kubelet_restart_ends_registered_with_one_socket() {
    let mut rig = Rig::new();
    let _p = rig.aws("2", &[]);
    rig.kubelet.wait_registration(1, WAIT).expect("first registration");
    for round in 2..=6 {
        let before = rig.kubelet.accepted();
        rig.kubelet.restart().unwrap();
        let reg =
            rig.kubelet.wait_registration(before + 1, WAIT).unwrap_or_else(|| panic!("round {round}: no Register"));
        assert_eq!(reg.request.endpoint, SOCKET);
        rig.kubelet.wait_devices(WAIT, |d| d.len() == 2).expect("the list after re-registering");
        assert!(
            wait_until(WAIT, || sockets(rig.dir()) == ["k8s-accel-b-com.com_accelerator.sock", "kubelet.sock"]),
            "round {round}: {:?}",
            sockets(rig.dir())
        );
    }
}

#[test]
fn a_deleted_plugin_socket_is_recreated_and_registered_again() {
    let rig = Rig::new();
    let p = rig.aws("2", &[]);
    rig.kubelet.wait_registration(1, WAIT).unwrap();
    std::fs::remove_file(rig.dir().join(SOCKET)).unwrap();
    rig.kubelet.wait_registration(2, WAIT).expect("a new Register after our socket was deleted");
    assert!(rig.dir().join(SOCKET).exists());
    assert!(p.log().contains("our socket was deleted"), "{}", p.log());
    // And it serves on the new socket.
    let client = rig.kubelet.plugin().unwrap();
    client.get_device_plugin_options(&Default::default()).unwrap();
}

#[test]
fn the_kubelet_dropping_the_last_stream_triggers_a_new_registration() {
    let rig = Rig::new();
    let p = rig.aws("2", &[]);
    rig.kubelet.wait_registration(1, WAIT).unwrap();
    rig.kubelet.wait_devices(WAIT, |d| d.len() == 2).unwrap();
    rig.kubelet.drop_streams();
    rig.kubelet.wait_registration(2, WAIT).expect("a new Register after the stream ended");
    assert!(p.log().contains("closed its last ListAndWatch stream"), "{}", p.log());
    // Once registered again, it stays quiet: no registration loop.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(rig.kubelet.registrations().len(), 2);
    assert_eq!(rig.kubelet.accepted(), 2);
}

#[test]
fn starts_before_the_kubelet_and_registers_when_it_appears() {
    let node = SimNode::new().unwrap();
    let dir = TempDir::new("kubelet").unwrap();
    let p = aws_plugin(dir.path(), &node, &[]);
    assert!(p.wait_log("cannot register b-com.com/accelerator with the kubelet", WAIT), "{}", p.log());
    std::thread::sleep(Duration::from_millis(1500));
    let kubelet = FakeKubelet::start(dir.path()).unwrap();
    let started = Instant::now();
    let reg = kubelet.wait_registration(1, WAIT).expect("registered once the kubelet came");
    assert!(reg.at.duration_since(started) < Duration::from_secs(3), "took {:?}", reg.at.duration_since(started));
    // Failures while waiting were logged once at info, then at debug.
    let log = p.log();
    assert_eq!(log.matches("[INFO] cannot register").count(), 1, "{log}");
    assert!(log.matches("[DEBUG] cannot register").count() >= 2, "{log}");
}

#[test]
fn a_rejecting_or_silent_kubelet_is_retried() {
    let rig = Rig::new();
    rig.kubelet.set_behavior(Behavior::Reject("resource already registered".into()));
    let p = rig.aws("2", &[]);
    rig.kubelet.wait_register_calls(3, WAIT).expect("retries after rejections");
    assert!(p.log().contains("resource already registered"), "{}", p.log());
    rig.kubelet.set_behavior(Behavior::Accept);
    rig.kubelet.wait_registration(1, WAIT).expect("accepted after the kubelet changed its mind");
}

#[test]
fn sigterm_and_sigint_stop_within_a_second_and_remove_the_socket() {
    for signal in [libc::SIGTERM, libc::SIGINT] {
        let rig = Rig::new();
        let mut p = rig.aws("2", &[]);
        rig.kubelet.wait_registration(1, WAIT).unwrap();
        rig.kubelet.wait_devices(WAIT, |d| d.len() == 2).unwrap();
        let sent = Instant::now();
        p.signal(signal);
        let status = p.wait_exit(WAIT).expect("exited");
        let took = sent.elapsed();
        assert_eq!(status.code(), Some(0), "signal {signal}: {}", p.log());
        assert!(took < Duration::from_secs(1), "signal {signal}: took {took:?}");
        assert_eq!(sockets(rig.dir()), ["kubelet.sock"], "signal {signal}");
    }
}

#[test]
fn sighup_rescans_and_registers_again() {
    let rig = Rig::new();
    let (node, kubelet) = (&rig.node, &rig.kubelet);
    std::fs::create_dir_all(node.sysfs().join("class/fpga")).unwrap();
    let p = rig.plugin(&["--scan-interval", "1h"]);
    kubelet.wait_registration(1, WAIT).unwrap();
    // A sysfs-only change (the node exists beforehand, so no dev-root event explains a rescan).
    node.add_node("intel-fpga-port.0").unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let function = node.pci_function("0000:5e:00.0", "0").unwrap();
    let container = function.join("fpga/intel-fpga-dev.0");
    std::fs::create_dir_all(container.join("intel-fpga-port.0")).unwrap();
    std::fs::write(container.join("intel-fpga-port.0/id"), "0\n").unwrap();
    std::os::unix::fs::symlink(&container, node.sysfs().join("class/fpga/intel-fpga-dev.0")).unwrap();
    p.signal(libc::SIGHUP);
    kubelet.wait_registration(2, WAIT).expect("registered again on SIGHUP");
    kubelet.wait_devices(WAIT, |d| d.len() == 1 && d[0].ID == "0000:5e:00.0").expect("rescanned on SIGHUP");
}

#[test]
fn stale_sockets_of_ours_are_removed_and_live_ones_are_left_alone() {
    let node = SimNode::new().unwrap();
    let dir = TempDir::new("kubelet").unwrap();
    // A socket nobody listens on, left by a killed run of ours with another resource name.
    drop(UnixListener::bind(dir.path().join("k8s-accel-example.com_old.sock")).unwrap());
    // Live sockets: another plugin's, and another instance of ours for another resource.
    let _other = UnixListener::bind(dir.path().join("nvidia-gpu.sock")).unwrap();
    let _sibling = UnixListener::bind(dir.path().join("k8s-accel-example.com_live.sock")).unwrap();
    let kubelet = FakeKubelet::start(dir.path()).unwrap();
    let p = aws_plugin(dir.path(), &node, &[]);
    kubelet.wait_registration(1, WAIT).unwrap();
    assert_eq!(
        sockets(dir.path()),
        ["k8s-accel-b-com.com_accelerator.sock", "k8s-accel-example.com_live.sock", "kubelet.sock", "nvidia-gpu.sock"]
    );
    assert!(p.log().contains("removed stale socket"), "{}", p.log());
}

#[test]
fn an_unwritable_log_file_is_a_warning_and_a_writable_one_gets_the_log() {
    let rig = Rig::new();
    let p = rig.aws("2", &["--log-file", "/nonexistent/dir/plugin.log"]);
    rig.kubelet.wait_registration(1, WAIT).expect("still registers");
    assert!(p.log().contains("cannot open log file /nonexistent/dir/plugin.log"), "{}", p.log());
    drop(p);

    let logs = TempDir::new("logs").unwrap();
    let file = logs.path().join("plugin.log");
    let p = rig.aws("2", &["-log-file", file.to_str().unwrap()]);
    assert!(wait_until(WAIT, || std::fs::read_to_string(&file)
        .unwrap_or_default()
        .contains("registered b-com.com/accelerator")));
    drop(p);
    // Every line starts with a UTC time of one width (microseconds), so that lines sort as text.
    let text = std::fs::read_to_string(&file).unwrap();
    for line in text.lines() {
        let (time, rest) = line.split_at(line.find(' ').unwrap_or(0));
        let shape: String = time.chars().map(|c| if c.is_ascii_digit() { '9' } else { c }).collect();
        assert_eq!(shape, "9999-99-99T99:99:99.999999Z", "{line}");
        assert!(["INFO", "WARN", "DEBUG"].iter().any(|l| rest.starts_with(&format!(" [{l}] "))), "{line}");
    }
}

#[test]
fn bad_flags_exit_2_with_one_line_naming_the_flag() {
    // What each bad value means is unit-tested in cli.rs; here: the exit code and a single line naming it.
    for (args, needle) in [
        (&["-accel-nbunits", "abc"][..], "--accel-nbunits"),
        (&["--resource-name", "kubernetes.io/fpga"], "--resource-name"),
        (&["--bogus"], "--bogus"),
    ] {
        let out = command(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
    let help = command(&["-help"]).output().unwrap();
    assert_eq!(help.status.code(), Some(0));
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in [
        "--backend",
        "--accel-nbunits",
        "--resource-name",
        "--device-plugin-path",
        "--sysfs-root",
        "--dev-root",
        "--scan-interval",
        "--log-level",
        "--log-file",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
    let version = command(&["--version"]).output().unwrap();
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("k8s-accelerator-devplugin "));
}

#[test]
fn a_kubelet_that_never_answers_is_timed_out_and_a_restart_is_not_held_up() {
    let mut rig = Rig::new();
    rig.kubelet.set_behavior(Behavior::Hang);
    let p = rig.aws("2", &[]);
    rig.kubelet.wait_register_calls(1, WAIT).unwrap();
    // The Register deadline is 10 s: then it is retried.
    rig.kubelet.wait_register_calls(2, Duration::from_secs(15)).expect("retried after the deadline");
    assert!(p.log().contains("DEADLINE_EXCEEDED"), "{}", p.log());
    // A kubelet restart while a Register hangs is acted on at once.
    rig.kubelet.set_behavior(Behavior::Accept);
    let restarted = Instant::now();
    rig.kubelet.restart().unwrap();
    let reg = rig.kubelet.wait_registration(1, WAIT).expect("registered after the restart");
    assert!(reg.at.duration_since(restarted) < Duration::from_secs(2), "{:?}", reg.at.duration_since(restarted));
}

#[test]
fn a_missing_device_plugins_directory_is_waited_for() {
    let node = SimNode::new().unwrap();
    let parent = TempDir::new("kubelet").unwrap();
    let dir = parent.path().join("device-plugins");
    let p = aws_plugin(&dir, &node, &["--scan-interval", "100ms"]);
    assert!(p.wait_log("cannot serve on", WAIT), "{}", p.log());
    std::thread::sleep(Duration::from_millis(500));
    let kubelet = FakeKubelet::start(&dir).unwrap();
    kubelet.wait_registration(1, WAIT).expect("registered once the directory and the kubelet appeared");
    let log = p.log();
    assert_eq!(log.matches("cannot watch").count(), 1, "warned once, not every tick:\n{log}");
    assert_eq!(log.matches("[WARN] cannot serve on").count(), 1, "{log}");
}

#[test]
fn probe_succeeds_against_a_running_plugin_and_fails_otherwise() {
    let node = SimNode::new().unwrap();
    let dir = TempDir::new("kubelet").unwrap();
    let probe = |extra: &[&str]| {
        let mut args = vec!["probe", "-device-plugin-path", dir.path().to_str().unwrap()];
        args.extend_from_slice(extra);
        let out = command(&args).output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
    };
    let (code, text) = probe(&[]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("does not exist"), "{text}");

    let kubelet = FakeKubelet::start(dir.path()).unwrap();
    let mut p = aws_plugin(dir.path(), &node, &[]);
    kubelet.wait_registration(1, WAIT).unwrap();
    let (code, text) = probe(&[]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.starts_with("ok: "), "{text}");
    // Another resource name is another socket.
    let (code, _) = probe(&["--resource-name", "example.com/other"]);
    assert_eq!(code, Some(1));

    // A socket file nobody answers on (a plugin that hangs).
    p.signal(libc::SIGSTOP);
    let (code, text) = probe(&[]);
    p.signal(libc::SIGCONT);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("does not answer"), "{text}");
    p.signal(libc::SIGTERM);
    assert_eq!(p.wait_exit(WAIT).and_then(|s| s.code()), Some(0));
    let (code, _) = probe(&[]);
    assert_eq!(code, Some(1));
    // A socket file left by a plugin that died without cleaning up.
    drop(UnixListener::bind(dir.path().join(SOCKET)).unwrap());
    let (code, text) = probe(&[]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("nothing listens on"), "{text}");
}

#[test]
fn a_missed_directory_event_is_caught_by_the_periodic_check() {
    // The device-plugins directory is swapped for a new one with a new kubelet in it. The plugin's watch
    // followed the old directory, and its new watch only comes at the next check, so nothing in the new
    // directory raises an event the plugin sees: only the periodic check of the lock file, our socket and
    // kubelet.sock can notice. Hard links carry some of our files into the new directory, so that each check
    // is the first to find something in one of the rounds.
    for (links, finding) in [
        (&[][..], "the lock file of"),
        (&["k8s-accel-locks/k8s-accel-b-com.com_accelerator.lock"][..], "our socket is gone"),
        (
            &["k8s-accel-locks/k8s-accel-b-com.com_accelerator.lock", "k8s-accel-b-com.com_accelerator.sock"][..],
            "kubelet.sock was replaced",
        ),
    ] {
        let node = SimNode::new().unwrap();
        let parent = TempDir::new("kubelet").unwrap();
        let dir = parent.path().join("dp");
        let _old_kubelet = FakeKubelet::start(&dir).unwrap();
        let p = aws_plugin(&dir, &node, &[]);
        assert!(p.wait_log("registered b-com.com/accelerator", WAIT), "{}", p.log());
        swap_in_a_new_directory_with_a_new_kubelet(parent.path(), links, &p, finding);
    }
}

/// Swaps the device-plugins directory `<parent>/dp` for a new one holding hard links to `links` of the old
/// one and a new kubelet, which raises no event the plugin's watch sees; waits for the plugin to register
/// with that kubelet, which only its periodic check can have found (the log says `finding`).
fn swap_in_a_new_directory_with_a_new_kubelet(parent: &Path, links: &[&str], p: &Plugin, finding: &str) {
    let (dir, new) = (parent.join("dp"), parent.join("new"));
    std::fs::create_dir_all(new.join("k8s-accel-locks")).unwrap();
    for link in links {
        std::fs::hard_link(dir.join(link), new.join(link)).unwrap();
    }
    std::fs::rename(&dir, parent.join("old")).unwrap();
    std::fs::rename(&new, &dir).unwrap();
    let kubelet = FakeKubelet::start(&dir).unwrap();
    kubelet.wait_registration(1, WAIT).unwrap_or_else(|| panic!("{finding}: not registered\n{}", p.log()));
    let log = p.log();
    assert!(log.contains(finding), "{finding}:\n{log}");
    assert!(!log.contains("kubelet.sock was created"), "seen through inotify after all:\n{log}");
}

#[test]
fn a_kubelet_back_without_an_event_after_one_went_away_is_registered_with() {
    // The kubelet goes away (its socket removed: the plugin forgets it and waits for a new one). The
    // directory is then swapped for one with our lock and socket in it (hard links) and a new kubelet:
    // its kubelet.sock raises no event the plugin sees, and our files look as they were; only the check
    // can see that a kubelet is there and we are not registered with it.
    let node = SimNode::new().unwrap();
    let parent = TempDir::new("kubelet").unwrap();
    let dir = parent.path().join("dp");
    let mut old_kubelet = FakeKubelet::start(&dir).unwrap();
    let p = aws_plugin(&dir, &node, &[]);
    assert!(p.wait_log("registered b-com.com/accelerator", WAIT), "{}", p.log());
    old_kubelet.stop();
    assert!(p.wait_log("is gone: registering again when it is back", WAIT), "{}", p.log());
    let links = ["k8s-accel-locks/k8s-accel-b-com.com_accelerator.lock", "k8s-accel-b-com.com_accelerator.sock"];
    swap_in_a_new_directory_with_a_new_kubelet(
        parent.path(),
        &links,
        &p,
        "kubelet.sock is there and we are not registered",
    );
}
