//! Measures the release binary against the simulated kubelet and prints a table.
//!
//! Run: cargo build --release && cargo run --release --example bench [-- --bin PATH]

use k8s_accelerator_devplugin::api;
use k8s_accelerator_devplugin::sim::{FakeKubelet, Fme, SimNode, TempDir};
use std::error::Error;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(10);

fn main() -> Result<(), Box<dyn Error>> {
    let bin = binary()?;
    println!("binary: {}", bin.display());
    let node = SimNode::new()?;
    node.opae_card("0000:5e:00.0", 0, 0, Some(Fme { instance: 0, ports_num: 1 }), &[(0, 0)])?;
    node.dfl_card("0000:86:00.0", 1, 0, Some(Fme { instance: 0, ports_num: 1 }), &[(1, 0)])?;
    let dir = TempDir::new("bench-kubelet")?;
    let mut kubelet = FakeKubelet::start(dir.path())?;

    let spawned = Instant::now();
    let mut child = Guard(
        Command::new(&bin)
            .args(["--device-plugin-path", &dir.path().display().to_string()])
            .args(["--sysfs-root", &node.sysfs().display().to_string()])
            .args(["--dev-root", &node.dev().display().to_string()])
            .args(["--log-level", "warn"])
            .stdin(Stdio::null())
            .spawn()?,
    );
    let reg = kubelet.wait_registration(1, WAIT).ok_or("no Register")?;
    let first = kubelet.wait_devices(WAIT, |d| d.len() == 2).ok_or("no list")?;
    row("exec -> Register received", reg.at.duration_since(spawned));
    row("Register -> first ListAndWatch list", first.at.saturating_duration_since(reg.at));

    // Idle: one ListAndWatch stream open (the fake kubelet's).
    std::thread::sleep(Duration::from_secs(3));
    let pid = child.0.id();
    let cpu_before = cpu_seconds(pid)?;
    std::thread::sleep(Duration::from_secs(5));
    let cpu = cpu_seconds(pid)? - cpu_before;
    let (rss, threads) = rss_threads(pid)?;
    println!("{:<46} {rss} kB", "idle RSS (VmRSS), one stream open");
    println!("{:<46} {threads}", "idle threads, one stream open");
    println!("{:<46} {cpu:.3} s", "CPU over 5 s idle");

    // Kubelet restarts.
    let mut restarts = Vec::new();
    for _ in 0..20 {
        let before = kubelet.accepted();
        let t = Instant::now();
        kubelet.restart()?;
        let reg = kubelet.wait_registration(before + 1, WAIT).ok_or("no re-Register")?;
        restarts.push(reg.at.duration_since(t));
        kubelet.wait_devices(WAIT, |d| d.len() == 2).ok_or("no list after restart")?;
    }
    stats("kubelet restart -> Register (20)", &mut restarts);

    // Device node removed / recreated -> ListAndWatch update.
    let mut changes = Vec::new();
    for i in 0..50 {
        let healthy = i % 2 == 1;
        let t = Instant::now();
        if healthy {
            node.add_node("dfl-port.1")?;
        } else {
            node.remove_node("dfl-port.1")?;
        }
        let want = if healthy { "Healthy" } else { "Unhealthy" };
        let u = kubelet
            .wait_devices(WAIT, |d| d.iter().any(|d| d.ID == "0000:86:00.0" && d.health == want))
            .ok_or("no update")?;
        changes.push(u.at.saturating_duration_since(t));
    }
    stats("device node change -> ListAndWatch (50)", &mut changes);

    // Allocate latency.
    let client = Arc::new(kubelet.plugin().ok_or("no client")?);
    let mut req = api::AllocateRequest::new();
    let mut c = api::ContainerAllocateRequest::new();
    c.devices_ids = vec!["0000:5e:00.0".into()];
    req.container_requests.push(c);
    let req = Arc::new(req);
    for _ in 0..200 {
        client.allocate(&req)?;
    }
    let mut seq = Vec::new();
    for _ in 0..2000 {
        let t = Instant::now();
        client.allocate(&req)?;
        seq.push(t.elapsed());
    }
    stats("Allocate, 1 client (2000 calls)", &mut seq);
    let started = Instant::now();
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let (client, req) = (Arc::clone(&client), Arc::clone(&req));
            std::thread::spawn(move || {
                (0..250)
                    .map(|_| {
                        let t = Instant::now();
                        client.allocate(&req).map(|_| t.elapsed())
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
        })
        .collect();
    let mut conc = Vec::new();
    for h in handles {
        conc.extend(h.join().map_err(|_| "client thread panicked")??);
    }
    let wall = started.elapsed();
    stats("Allocate, 8 clients (2000 calls)", &mut conc);
    println!("{:<46} {:.0} calls/s", "Allocate throughput, 8 clients", 2000.0 / wall.as_secs_f64());
    let (rss, _) = rss_threads(pid)?;
    println!("{:<46} {rss} kB", "RSS after the Allocates");

    let t = Instant::now();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let status = child.0.wait()?;
    row("SIGTERM -> exit", t.elapsed());
    println!("exit status: {status}");
    Ok(())
}

/// Kills the plugin if the benchmark fails half-way.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn binary() -> Result<PathBuf, Box<dyn Error>> {
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

fn row(what: &str, d: Duration) {
    println!("{what:<46} {:.2} ms", d.as_secs_f64() * 1e3);
}

fn stats(what: &str, samples: &mut [Duration]) {
    samples.sort();
    let pick = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "{what:<46} p50 {:.0} µs, p99 {:.0} µs, max {:.0} µs",
        us(pick(0.5)),
        us(pick(0.99)),
        us(samples[samples.len() - 1])
    );
}

fn rss_threads(pid: u32) -> Result<(u64, u64), Box<dyn Error>> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> Option<u64> {
        status.lines().find(|l| l.starts_with(name))?.split_whitespace().nth(1)?.parse().ok()
    };
    Ok((field("VmRSS:").ok_or("no VmRSS")?, field("Threads:").ok_or("no Threads")?))
}

fn cpu_seconds(pid: u32) -> Result<f64, Box<dyn Error>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat.rsplit_once(')').ok_or("bad stat")?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks / hz)
}
