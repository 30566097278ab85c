//! Measures the release binary against the simulated kubelet, and discovery in-process, and prints a
//! Markdown table (the one in BENCHMARKS.md).
//!
//! Run: cargo build --release && cargo run --release --example bench [-- --bin PATH]
//! (PATH: another build of the plugin, e.g. the static musl binary from ./build.sh static; --scans: only
//! the discovery measurements; --idle: only the idle wake-ups, which the full run measures last, over
//! BENCH_IDLE_SECONDS, 60 by default).

use k8s_accelerator_devplugin::api;
use k8s_accelerator_devplugin::discovery::{self, Backend, Roots};
use k8s_accelerator_devplugin::registry::Registry;
use k8s_accelerator_devplugin::sim::{FakeKubelet, Fme, SimNode, TempDir};
use protobuf::Message;
use std::collections::BTreeMap;
use std::error::Error;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(10);

type Res<T> = Result<T, Box<dyn Error>>;

fn main() -> Res<()> {
    let bin = binary()?;
    machine(&bin)?;
    println!("| measurement | result | goal |\n|---|---|---|");
    if std::env::args().any(|a| a == "--idle") {
        return idle(&bin);
    }
    // --scans: only the in-process discovery measurements.
    if !std::env::args().any(|a| a == "--scans") {
        let one = plugin(&bin)?;
        resources(&bin, one)?;
        health(&bin)?;
    }
    scans()?;
    if !std::env::args().any(|a| a == "--scans") {
        idle(&bin)?;
    }
    Ok(())
}

/// The single-resource run; returns its idle RSS (KiB) and threads, to compare with several resources.
fn plugin(bin: &PathBuf) -> Res<(u64, u64)> {
    let node = SimNode::new()?;
    node.opae_card("0000:5e:00.0", 0, 0, Some(Fme { instance: 0, ports_num: 1 }), &[(0, 0)])?;
    node.dfl_card("0000:86:00.0", 1, 0, Some(Fme { instance: 0, ports_num: 1 }), &[(1, 0)])?;
    let dir = TempDir::new("bench-kubelet")?;
    let mut kubelet = FakeKubelet::start(dir.path())?;

    let spawned = Instant::now();
    // The plugin runs with its default log level (info: one line per Allocate) and its stderr drained
    // through a pipe, as under a container runtime. BENCH_LOG_LEVEL=<level> shows its log here instead.
    let shown = std::env::var("BENCH_LOG_LEVEL").ok();
    let mut child = Guard(
        Command::new(bin)
            .args(["--device-plugin-path", &dir.path().display().to_string()])
            .args(["--sysfs-root", &node.sysfs().display().to_string()])
            .args(["--dev-root", &node.dev().display().to_string()])
            .args(["--log-level", shown.as_deref().unwrap_or("info")])
            .stdin(Stdio::null())
            .stderr(if shown.is_some() { Stdio::inherit() } else { Stdio::piped() })
            .spawn()?,
    );
    if let Some(mut log) = child.0.stderr.take() {
        std::thread::spawn(move || std::io::copy(&mut log, &mut std::io::sink()));
    }
    let pid = child.0.id();
    let reg = kubelet.wait_registration(1, WAIT).ok_or("no Register")?;
    let first = kubelet.wait_devices(WAIT, |d| d.len() == 2).ok_or("no list")?;
    row("exec → Register received", ms(reg.at.duration_since(spawned)), "");
    row("Register → first ListAndWatch message", ms(first.at.saturating_duration_since(reg.at)), "");

    // Idle, with the fake kubelet's ListAndWatch stream open.
    std::thread::sleep(Duration::from_secs(10));
    let cpu_before = cpu_seconds(pid)?;
    std::thread::sleep(Duration::from_secs(10));
    let cpu = cpu_seconds(pid)? - cpu_before;
    let (rss, threads) = rss_threads(pid)?;
    let idle = (rss, threads);
    row("idle after 10 s: RSS (VmRSS)", format!("{:.1} MiB", rss as f64 / 1024.0), "≤ 5 MiB (static build)");
    row("idle: threads, one ListAndWatch stream open", threads.to_string(), "≤ 10");
    row("idle: CPU seconds over 10 s", format!("{cpu:.3} s"), "~0");

    let fds_before = open_fds(pid)?;
    let rounds: usize = std::env::var("BENCH_RESTARTS").ok().and_then(|n| n.parse().ok()).unwrap_or(100);
    let mut restarts = Vec::new();
    let registers_before = kubelet.registrations().len();
    for _ in 0..rounds {
        let before = kubelet.accepted();
        let t = Instant::now();
        kubelet.restart()?;
        let reg = kubelet.wait_registration(before + 1, WAIT).ok_or("no re-Register")?;
        restarts.push(reg.at.duration_since(t));
        kubelet.wait_devices(WAIT, |d| d.len() == 2).ok_or("no list after restart")?;
    }
    row(&format!("kubelet restart → new Register ({rounds} restarts)"), p50_max(&mut restarts), "≤ 100 ms p50");
    // Long enough for a late second Register of the last restart to arrive too.
    std::thread::sleep(Duration::from_millis(500));
    let registers = kubelet.registrations().len() - registers_before;
    row(
        &format!("Register calls the kubelet received per restart ({rounds} restarts)"),
        format!("{:.2} ({registers} in all)", registers as f64 / rounds as f64),
        "1",
    );
    row(
        &format!("open file descriptors before / after the {rounds} restarts"),
        format!("{fds_before} / {}", open_fds(pid)?),
        "no growth",
    );

    let mut changes = Vec::new();
    for i in 0..50 {
        let created = i % 2 == 1;
        let t = Instant::now();
        if created {
            node.add_node("dfl-port.1")?;
        } else {
            node.remove_node("dfl-port.1")?;
        }
        let want = if created { "Healthy" } else { "Unhealthy" };
        let u = kubelet
            .wait_devices(WAIT, |d| d.iter().any(|d| d.ID == "0000:86:00.0" && d.health == want))
            .ok_or("no update")?;
        let took = u.at.saturating_duration_since(t);
        if took > Duration::from_millis(100) {
            eprintln!("bench: slow update: node change {i} took {took:?} (started {:?} after the first change)", t);
        }
        changes.push(took);
    }
    row("device node created / removed → ListAndWatch (50)", p50_max(&mut changes), "≤ 100 ms");

    let client = Arc::new(kubelet.plugin().ok_or("no client")?);
    let mut req = api::AllocateRequest::new();
    let mut c = api::ContainerAllocateRequest::new();
    c.devices_ids = vec!["0000:5e:00.0".into()];
    req.container_requests.push(c);
    let req = Arc::new(req);
    allocate_many(&client, &req, 1, 1_000)?; // warm up
    let (mut lat, wall) = allocate_many(&client, &req, 1, 10_000)?;
    row("Allocate, 1 client, 10,000 calls", p50_p99(&mut lat), "p99 ≤ 150 µs");
    row("Allocate, 1 client: calls per second", format!("{:.0}", 10_000.0 / wall.as_secs_f64()), "");
    let (mut lat, wall) = allocate_many(&client, &req, 8, 10_000)?;
    row("Allocate, 8 concurrent clients, 10,000 calls", p50_p99(&mut lat), "");
    row("Allocate, 8 clients: calls per second", format!("{:.0}", 10_000.0 / wall.as_secs_f64()), "");
    let (rss_before, _) = rss_threads(pid)?;
    allocate_many(&client, &req, 8, 100_000)?;
    let (rss_after, _) = rss_threads(pid)?;
    row(
        "RSS before / after 100,000 more Allocates",
        format!("{:.1} / {:.1} MiB", rss_before as f64 / 1024.0, rss_after as f64 / 1024.0),
        "no growth beyond noise",
    );

    let t = Instant::now();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let status = child.0.wait()?;
    row("SIGTERM → exit", format!("{} (exit code {})", ms(t.elapsed()), status.code().unwrap_or(-1)), "< 1 s, 0");
    Ok(idle)
}

/// Four resources (`--afu-resource` twice and `auto`: the default, two named, one auto) against one: idle
/// threads and RSS, each resource with its ListAndWatch stream open.
fn resources(bin: &PathBuf, (rss_one, threads_one): (u64, u64)) -> Res<()> {
    let node = SimNode::new()?;
    let afus =
        ["11111111111111111111111111111111", "22222222222222222222222222222222", "33333333333333333333333333333333"];
    for (i, afu) in afus.iter().enumerate() {
        let ports = node.dfl_card(&format!("0000:{:02x}:00.0", 0x10 + i), 0, i as u32, None, &[(i as u32, 0)])?;
        node.set_afu(&ports[0], afu)?;
    }
    node.dfl_card("0000:20:00.0", 0, 9, None, &[(9, 0)])?;
    node.set_afu(&node.sysfs().join("class/fpga_region/region9/dfl-port.9"), &"f".repeat(32))?;
    let dir = TempDir::new("bench-kubelet")?;
    let kubelet = FakeKubelet::start(dir.path())?;
    let one = format!("example.com/one={}", afus[0]);
    let two = format!("example.com/two={}", afus[1]);
    let child = spawn_quiet(
        bin,
        dir.path(),
        &node,
        &["--afu-resource", &one, "--afu-resource", &two, "--afu-resource", "auto"],
    )?;
    let auto = format!("b-com.com/afu-{}", afus[2]);
    for resource in ["b-com.com/accelerator", "example.com/one", "example.com/two", auto.as_str()] {
        kubelet.wait_devices_of(resource, WAIT, |d| d.len() == 1).ok_or(format!("no list of {resource}"))?;
    }
    std::thread::sleep(Duration::from_secs(10));
    let (rss, threads) = rss_threads(child.0.id())?;
    row(
        "4 resources, idle: threads (1 resource: see above)",
        format!("{threads} ({:+.1} per extra resource)", (threads as f64 - threads_one as f64) / 3.0),
        "≤ +2 per extra resource",
    );
    row(
        "4 resources, idle: RSS",
        format!(
            "{:.1} MiB ({:+.2} MiB per extra resource)",
            rss as f64 / 1024.0,
            (rss as f64 - rss_one as f64) / 1024.0 / 3.0
        ),
        "≤ +1 MiB per extra resource",
    );
    Ok(())
}

/// 64 OPAE ports at default flags (health pass every second, full discovery every 30 s): idle CPU, system
/// calls per port and pass (with `strace` installed), and how long a health change takes to reach
/// ListAndWatch, over 20 changes made at drifting moments of the health pass's period.
fn health(bin: &PathBuf) -> Res<()> {
    const PORTS: u32 = 64;
    let node = SimNode::new()?;
    let mut port_dirs = Vec::new();
    for i in 0..PORTS {
        let address = format!("0000:{:02x}:00.0", 0x10 + i);
        port_dirs.extend(node.opae_card(
            &address,
            i64::from(i % 2),
            i,
            Some(Fme { instance: i, ports_num: 1 }),
            &[(i, 0)],
        )?);
    }
    let dir = TempDir::new("bench-kubelet")?;
    let kubelet = FakeKubelet::start(dir.path())?;
    let child = spawn_quiet(bin, dir.path(), &node, &[])?;
    let pid = child.0.id();
    kubelet.wait_devices(WAIT, |d| d.len() == PORTS as usize).ok_or("no list of 64 ports")?;
    std::thread::sleep(Duration::from_secs(10));
    let before = cpu_ns(pid)?;
    std::thread::sleep(Duration::from_secs(10));
    let cpu = (cpu_ns(pid)? - before) as f64 / 1e9;
    row("64 OPAE ports, default flags, idle: CPU over 10 s", format!("{cpu:.4} s"), "≤ 0.02 s");
    if let Some(calls) = strace_calls(pid, Duration::from_secs(10)) {
        // Ten health passes in 10 s.
        row(
            "64 ports idle: system calls over 10 s (strace -c -f), per port and pass",
            format!("{calls} ({:.1})", calls as f64 / 10.0 / f64::from(PORTS)),
            "",
        );
    }

    let mut changes = Vec::new();
    let errors = port_dirs[7].join("errors/errors");
    let id = "0000:17:00.0";
    for i in 0..20 {
        let failing = i % 2 == 0;
        let t = Instant::now();
        k8s_accelerator_devplugin::sim::sim_write(&errors, if failing { "0x40\n" } else { "0x0\n" })?;
        let want = if failing { "Unhealthy" } else { "Healthy" };
        let u = kubelet
            .wait_devices(WAIT, |d| d.iter().any(|d| d.ID == id && d.health == want))
            .ok_or("no health update")?;
        changes.push(u.at.saturating_duration_since(t));
        // The next change comes at another moment of the pass's 1 s period (just after this pass): spread
        // over the whole period, so that the 20 changes sample all of it.
        std::thread::sleep(Duration::from_millis((i * 379 % 1000) as u64));
    }
    row("health change → ListAndWatch, default flags (20)", p50_max(&mut changes), "p50 ≤ 0.6 s, max ≤ 1.1 s");
    drop(child);
    Ok(())
}

/// How many system calls `pid`'s threads make over `period`, counted by `strace -c -f` (None without strace
/// or the right to trace).
fn strace_calls(pid: u32, period: Duration) -> Option<u64> {
    let out = TempDir::new("bench-strace").ok()?;
    let file = out.path().join("count");
    let mut strace = Command::new("strace")
        .args(["-c", "-f", "-o"])
        .arg(&file)
        .args(["-p", &pid.to_string()])
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    std::thread::sleep(period);
    // SAFETY: signalling our own child; strace detaches and writes its summary on SIGINT.
    unsafe { libc::kill(strace.id() as i32, libc::SIGINT) };
    strace.wait().ok()?;
    let text = std::fs::read_to_string(&file).ok()?;
    // The summary's last line: `100.00  <seconds>  <usecs/call>  <calls>  [<errors>]  total`.
    let total = text.lines().rev().find(|l| l.trim_end().ends_with("total"))?;
    total.split_whitespace().nth(3)?.parse().ok()
}

/// `calls` Allocates spread over `clients` threads: each call's latency, and the wall time.
fn allocate_many(
    client: &Arc<api::DevicePluginClient>,
    req: &Arc<api::AllocateRequest>,
    clients: usize,
    calls: usize,
) -> Res<(Vec<Duration>, Duration)> {
    let started = Instant::now();
    let handles: Vec<_> = (0..clients)
        .map(|_| {
            let (client, req) = (Arc::clone(client), Arc::clone(req));
            std::thread::spawn(move || {
                (0..calls / clients)
                    .map(|_| {
                        let t = Instant::now();
                        client.allocate(&req).map(|_| t.elapsed())
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
        })
        .collect();
    let mut all = Vec::with_capacity(calls);
    for h in handles {
        all.extend(h.join().map_err(|_| "client thread panicked")??);
    }
    Ok((all, started.elapsed()))
}

/// Full discovery scans, in-process, on large simulated nodes.
fn scans() -> Res<()> {
    let opae = SimNode::new()?;
    let dfl = SimNode::new()?;
    for i in 0..1000u32 {
        let address = format!("0000:{:02x}:{:02x}.{}", i / 32 % 256, i % 32, 0);
        let address = if i >= 256 * 32 { return Err("too many".into()) } else { address };
        opae.opae_card(&address, i64::from(i % 2), i, Some(Fme { instance: i, ports_num: 1 }), &[(i, 0)])?;
        dfl.dfl_card(&address, i64::from(i % 2), i, Some(Fme { instance: i, ports_num: 1 }), &[(i, 0)])?;
    }
    // What bounds a scan: it is a few system calls per port.
    let probe = opae.dev().join("intel-fpga-port.0");
    let t = Instant::now();
    for _ in 0..100_000 {
        std::fs::metadata(&probe)?;
    }
    row(
        "one stat(2) system call, for scale (mean of 100,000)",
        format!("{:.2} µs", t.elapsed().as_secs_f64() * 10.0),
        "",
    );
    for (what, node, backend, want) in [
        ("OPAE ports", Some(&opae), Backend::Intel, 1000),
        ("DFL ports", Some(&dfl), Backend::Intel, 1000),
        ("aws units", None, Backend::Aws { units: 100_000 }, 100_000),
    ] {
        let roots = match node {
            Some(n) => Roots { sysfs: n.sysfs(), dev: n.dev() },
            None => Roots { sysfs: "/nonexistent".into(), dev: "/nonexistent".into() },
        };
        let mut times = Vec::new();
        let mut found = 0;
        // As the plugin runs them: the first fills the cache of fixed attributes, the next use it.
        let mut cache = discovery::intel::Cache::default();
        let t = Instant::now();
        discovery::scan_with(backend, &roots, &mut cache);
        let first = t.elapsed();
        for _ in 0..21 {
            let t = Instant::now();
            let scan = discovery::scan_with(backend, &roots, &mut cache);
            times.push(t.elapsed());
            found = scan.devices.len();
        }
        if found != want {
            return Err(format!("{what}: found {found}, expected {want}").into());
        }
        let mut registry = Registry::default();
        registry.update(discovery::scan(backend, &roots).devices);
        let size = registry.snapshot().list().compute_size();
        let goal = if backend == Backend::Intel { "≤ 20 ms" } else { "" };
        row(&format!("full scan, {want} {what} (median of 21)"), ms(median(&mut times)), goal);
        if backend == Backend::Intel {
            row(&format!("first full scan, {want} {what} (nothing cached yet)"), ms(first), "");
        }
        row(&format!("one ListAndWatch message, {want} {what}"), format!("{size} bytes"), "");
        if backend == Backend::Intel {
            let ports = discovery::scan(backend, &roots).ports;
            // As the plugin does it: the attribute files opened once, then re-read at every pass.
            let files: Vec<_> = ports.iter().map(discovery::intel::PortFiles::open).collect();
            let mut times = Vec::new();
            for _ in 0..21 {
                let t = Instant::now();
                let healthy = ports
                    .iter()
                    .zip(&files)
                    .filter_map(|(p, f)| discovery::intel::health(p, f))
                    .filter(|(_, h)| h.is_healthy())
                    .count();
                times.push(t.elapsed());
                if healthy != want {
                    return Err(format!("{what}: {healthy} healthy in a health pass, expected {want}").into());
                }
            }
            row(&format!("health pass, {want} {what} (median of 21)"), ms(median(&mut times)), "≤ 5 ms");
        }
    }
    aws_fpga_scans()
}

/// An f2.48xlarge (8 slots, XDMA bound to each) among 64 other PCI functions: a full discovery, and a
/// health pass over the slots (a `stat` and a `readlink` each).
fn aws_fpga_scans() -> Res<()> {
    use k8s_accelerator_devplugin::discovery::aws_fpga;
    use k8s_accelerator_devplugin::sim::AwsDriver;
    let node = SimNode::new()?;
    for (i, slot) in node.aws_instance(aws_fpga::Generation::F2, 8)?.iter().enumerate() {
        node.aws_bind(slot, AwsDriver::Xdma(i as u32))?;
    }
    for i in 0..64u16 {
        node.aws_function(&format!("0000:05:{:02x}.{}", 1 + i / 8, i % 8), 0x8086, 0x1000 + i, 0)?;
    }
    let roots = Roots { sysfs: node.sysfs(), dev: node.dev() };
    let mut times = Vec::new();
    let mut slots = Vec::new();
    for _ in 0..21 {
        let t = Instant::now();
        let scan = discovery::scan(Backend::AwsFpga, &roots);
        times.push(t.elapsed());
        if scan.devices.len() != 8 || !scan.devices.iter().all(|d| d.health.is_healthy() && d.nodes.len() == 27) {
            return Err(
                format!("aws-fpga: {} slots found, expected 8 healthy with 27 nodes each", scan.devices.len()).into()
            );
        }
        slots = scan.slots;
    }
    row("full scan, 8 AWS FPGA slots with XDMA among 74 PCI functions (median of 21)", ms(median(&mut times)), "");
    let mut times = Vec::new();
    for _ in 0..21 {
        let t = Instant::now();
        if slots.iter().any(aws_fpga::changed) {
            return Err("aws-fpga: a slot changed in a health pass".into());
        }
        times.push(t.elapsed());
    }
    row("health pass, 8 AWS FPGA slots (median of 21)", us(median(&mut times)), "");
    Ok(())
}

/// Each thread of `pid`: (name, voluntary context switches, CPU ns), by thread ID. A voluntary switch is
/// the thread going to sleep, so between two readings it counts the wake-ups in between.
fn per_thread(pid: u32) -> Res<BTreeMap<u32, (String, u64, u64)>> {
    let mut out = BTreeMap::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let task = task?;
        let Some(tid) = task.file_name().to_str().and_then(|t| t.parse().ok()) else { continue };
        // A thread that ended since the listing (gRPC core's pools come and go) is skipped.
        let read = |name: &str| std::fs::read_to_string(task.path().join(name)).ok();
        let (Some(name), Some(status), Some(stat)) = (read("comm"), read("status"), read("schedstat")) else {
            continue;
        };
        let switches = status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|v| v.trim().parse().ok())
            .ok_or("no voluntary_ctxt_switches")?;
        let ns = stat.split_whitespace().next().ok_or("empty schedstat")?.parse()?;
        out.insert(tid, (name.trim().to_string(), switches, ns));
    }
    Ok(out)
}

/// Idle wake-ups and CPU, registered with one ListAndWatch stream open, over `BENCH_IDLE_SECONDS` (60 by
/// default) from 20 s after registering: the AWS flavour (4 units), then Intel with 64 OPAE ports at
/// default flags. Per thread: wake-ups per second, by thread name.
fn idle(bin: &PathBuf) -> Res<()> {
    let seconds: u64 = std::env::var("BENCH_IDLE_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(60);
    let node = SimNode::new()?;
    let intel = SimNode::new()?;
    for i in 0..64u32 {
        let address = format!("0000:{:02x}:00.0", i + 1);
        intel.opae_card(&address, i64::from(i % 2), i, Some(Fme { instance: i, ports_num: 1 }), &[(i, 0)])?;
    }
    for (what, on, extra, want, goal) in [
        ("aws, 4 units", &node, &["--backend", "aws", "--accel-nbunits", "4"][..], 4, "≤ 5 ms CPU, ≤ 0.5 wake-ups/s"),
        ("intel, 64 ports", &intel, &[][..], 64, "the health pass (1/s), which discovery and check join"),
    ] {
        let dir = TempDir::new("bench-kubelet")?;
        let kubelet = FakeKubelet::start(dir.path())?;
        let child = spawn_quiet(bin, dir.path(), on, extra)?;
        let pid = child.0.id();
        kubelet.wait_registration(1, WAIT).ok_or("no Register")?;
        kubelet.wait_devices(WAIT, |d| d.len() == want).ok_or("no list")?;
        std::thread::sleep(Duration::from_secs(20));
        let before = per_thread(pid)?;
        std::thread::sleep(Duration::from_secs(seconds));
        let after = per_thread(pid)?;
        // Ours: the main thread and the threads we name. gRPC core names its threads in a glibc build
        // (`grpc_global_tim`, `event_engine`, …); in the static musl build it cannot, and its threads
        // inherit the name of the thread that started them: of the threads that share one of our names,
        // the first (lowest ID) is ours, the others gRPC core's.
        let ours = |name: &str| {
            ["registration", "list-and-watch", "wait-for-owner"].contains(&name)
                || name.strip_prefix("grpc-").is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        };
        let mut by_name: BTreeMap<String, (u64, u64, bool)> = BTreeMap::new();
        let mut seen = std::collections::HashSet::new();
        for (tid, (name, switches, ns)) in &after {
            let (s0, n0) = before.get(tid).map_or((0, 0), |(_, s, n)| (*s, *n));
            let (label, is_ours) = if *tid == pid {
                ("main (event loop)".to_string(), true)
            } else if ours(name) && seen.insert(name.clone()) {
                (name.clone(), true)
            } else if name.starts_with("grpc-") {
                (format!("{name} (gRPC core, started from the completion-queue thread)"), false)
            } else {
                (format!("gRPC core ({name})"), false)
            };
            let entry = by_name.entry(label).or_default();
            entry.0 += switches.saturating_sub(s0);
            entry.1 += ns.saturating_sub(n0);
            entry.2 = is_ours;
        }
        let total = |only_ours: bool| -> String {
            let (w, n) = (by_name.values())
                .filter(|(_, _, o)| *o || !only_ours)
                .fold((0, 0), |(w, n), (a, b, _)| (w + a, n + b));
            format!("{:.1} ms, {:.2}/s", n as f64 / 1e6, w as f64 / seconds as f64)
        };
        row(&format!("idle {seconds} s, {what}: CPU, wake-ups per second, our threads"), total(true), goal);
        row(
            &format!("idle {seconds} s, {what}: the same, all {} threads (gRPC core's too)", after.len()),
            total(false),
            "",
        );
        let per: Vec<String> = by_name
            .iter()
            .filter(|(_, (w, _, _))| *w > 0)
            .map(|(name, (w, n, _))| format!("{name} {:.2}/s ({:.1} ms)", *w as f64 / seconds as f64, *n as f64 / 1e6))
            .collect();
        row(&format!("idle, {what}: wake-ups per thread name"), per.join(", "), "");
        drop(child);
    }
    Ok(())
}

/// The plugin against `node` and the kubelet directory `dir`, with `extra` flags, its log discarded.
fn spawn_quiet(bin: &PathBuf, dir: &std::path::Path, node: &SimNode, extra: &[&str]) -> Res<Guard> {
    Ok(Guard(
        Command::new(bin)
            .args(["--device-plugin-path", &dir.display().to_string()])
            .args(["--sysfs-root", &node.sysfs().display().to_string()])
            .args(["--dev-root", &node.dev().display().to_string()])
            .args(extra)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    ))
}

/// Kills the plugin if the benchmark fails half-way.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn binary() -> Res<PathBuf> {
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--bin" {
            return Ok(args.next().ok_or("--bin needs a path")?.into());
        }
    }
    // target/release/examples/bench -> target/release/k8s-accelerator-devplugin
    let exe = std::env::current_exe()?;
    let bin = exe.parent().and_then(|p| p.parent()).ok_or("no target dir")?.join("k8s-accelerator-devplugin");
    if !bin.exists() {
        return Err(format!("{} not found: run cargo build --release first, or pass --bin", bin.display()).into());
    }
    Ok(bin)
}

fn machine(bin: &PathBuf) -> Res<()> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo")?;
    let model = cpuinfo.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split(':').nth(1)).unwrap_or("?");
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")?;
    let total = mem.lines().next().unwrap_or("").split_whitespace().nth(1).unwrap_or("0").parse::<u64>().unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")?;
    let size = std::fs::metadata(bin)?.len();
    println!(
        "machine: {} CPUs ({}), {:.0} GiB, Linux {}\nbinary: {} ({size} bytes)\n",
        cpus,
        model.trim(),
        total as f64 / 1024.0 / 1024.0,
        kernel.trim(),
        bin.display()
    );
    Ok(())
}

fn row(what: &str, result: String, goal: &str) {
    println!("| {what} | {result} | {goal} |");
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

fn quantile(samples: &mut [Duration], q: f64) -> Duration {
    samples.sort();
    samples[((samples.len() as f64 - 1.0) * q).round() as usize]
}

fn median(samples: &mut [Duration]) -> Duration {
    quantile(samples, 0.5)
}

fn p50_max(samples: &mut [Duration]) -> String {
    format!("p50 {}, max {}", ms(quantile(samples, 0.5)), ms(quantile(samples, 1.0)))
}

fn p50_p99(samples: &mut [Duration]) -> String {
    format!("p50 {}, p99 {}", us(quantile(samples, 0.5)), us(quantile(samples, 0.99)))
}

fn rss_threads(pid: u32) -> Res<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> Option<u64> {
        status.lines().find(|l| l.starts_with(name))?.split_whitespace().nth(1)?.parse().ok()
    };
    Ok((field("VmRSS:").ok_or("no VmRSS")?, field("Threads:").ok_or("no Threads")?))
}

fn open_fds(pid: u32) -> Res<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count())
}

/// CPU time of all of `pid`'s threads, in nanoseconds (`/proc/<pid>/task/*/schedstat`, first field): finer
/// than the clock ticks of `/proc/<pid>/stat`.
fn cpu_ns(pid: u32) -> Res<u64> {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let stat = std::fs::read_to_string(task?.path().join("schedstat"))?;
        total += stat.split_whitespace().next().ok_or("empty schedstat")?.parse::<u64>()?;
    }
    Ok(total)
}

fn cpu_seconds(pid: u32) -> Res<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat.rsplit_once(')').ok_or("bad stat")?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks / hz)
}
