//! A tour of the plugin without a cluster: a simulated node with two Intel FPGA ports, a simulated kubelet
//! (the same one the tests use), and the plugin itself, in one process.
//!
//! Run: cargo run --release --example demo

use k8s_accelerator_devplugin::api;
use k8s_accelerator_devplugin::control;
use k8s_accelerator_devplugin::daemon::{self, Settings};
use k8s_accelerator_devplugin::discovery::{Backend, Roots};
use k8s_accelerator_devplugin::routing::Routes;
use k8s_accelerator_devplugin::sim::{FakeKubelet, Fme, SimNode, TempDir};
use std::error::Error;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(10);

fn main() -> Result<(), Box<dyn Error>> {
    let quiet = std::env::args().any(|a| a == "--quiet");
    if !quiet {
        k8s_accelerator_devplugin::logging::init(log::LevelFilter::Info, None);
    }

    step("A simulated node: two Intel FPGA ports (one OPAE card, one DFL card)");
    let node = SimNode::new()?;
    node.opae_card("0000:5e:00.0", 0, 0, Some(Fme { instance: 0, ports_num: 1 }), &[(0, 0)])?;
    node.dfl_card("0000:86:00.0", 1, 0, Some(Fme { instance: 0, ports_num: 1 }), &[(1, 0)])?;
    println!("  sysfs: {}\n  dev:   {}", node.sysfs().display(), node.dev().display());

    step("A simulated kubelet serving kubelet.sock");
    let dir = TempDir::new("demo-kubelet")?;
    let mut kubelet = FakeKubelet::start(dir.path())?;
    println!("  {}", dir.path().join(api::KUBELET_SOCKET).display());

    step("The plugin starts, serves its socket, and registers");
    let (control, handle) = control::new()?;
    let settings = Settings {
        backend: Backend::Intel,
        routes: Routes::single("b-com.com/accelerator"),
        device_plugin_path: dir.path().to_path_buf(),
        cdi_spec_dir: None,
        roots: Roots { sysfs: node.sysfs(), dev: node.dev() },
        scan_interval: Duration::from_secs(5),
        health_interval: Duration::from_secs(1),
    };
    let started = Instant::now();
    let plugin = std::thread::spawn(move || daemon::run(settings, control));
    let reg = kubelet.wait_registration(1, WAIT).ok_or("the plugin did not register")?;
    println!(
        "  Register after {:?}: version {}, resource {}, endpoint {}",
        reg.at.duration_since(started),
        reg.request.version,
        reg.request.resource_name,
        reg.request.endpoint
    );
    if let Some(o) = &reg.options {
        println!(
            "  GetDevicePluginOptions (called by the kubelet during Register): pre_start_required={}, get_preferred_allocation_available={}",
            o.pre_start_required, o.get_preferred_allocation_available
        );
    }

    step("ListAndWatch: the devices the kubelet now advertises");
    let update = kubelet.wait_devices(WAIT, |d| d.len() == 2).ok_or("no device list")?;
    print_devices(&update.devices);

    step("A pod with one container asks for one accelerator: Allocate");
    let client = kubelet.plugin().ok_or("no plugin client")?;
    let mut req = api::AllocateRequest::new();
    let mut container = api::ContainerAllocateRequest::new();
    container.devices_ids = vec!["0000:86:00.0".into()];
    req.container_requests.push(container);
    let resp = client.allocate(&req)?;
    for c in &resp.container_responses {
        for (k, v) in &c.envs {
            println!("  env    {k}={v}");
        }
        for d in &c.devices {
            println!("  device {} -> {} ({})", d.host_path, d.container_path, d.permissions);
        }
    }

    step("Hot-add: a third port appears (DFL card 0000:af:00.0)");
    let added = Instant::now();
    node.dfl_card("0000:af:00.0", 1, 1, Some(Fme { instance: 1, ports_num: 1 }), &[(2, 0)])?;
    let update = kubelet.wait_devices(WAIT, |d| d.len() == 3).ok_or("the new port was not advertised")?;
    println!("  new list after {:?}:", update.at.duration_since(added));
    print_devices(&update.devices);

    step("The kubelet restarts (every socket in the directory is deleted, kubelet.sock comes back)");
    let restarted = Instant::now();
    kubelet.restart()?;
    let reg = kubelet.wait_registration(2, WAIT).ok_or("no re-registration")?;
    println!("  registered again after {:?}", reg.at.duration_since(restarted));
    let update = kubelet.wait_devices(WAIT, |d| d.len() == 3).ok_or("no list after the restart")?;
    println!("  and the kubelet has the full list again ({} devices)", update.devices.len());

    step("SIGTERM (here: the control handle): the plugin stops and removes its socket");
    handle.stop();
    plugin.join().map_err(|_| "the plugin thread panicked")??;
    let left: Vec<String> = std::fs::read_dir(dir.path())?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    println!("  files left in the device-plugins directory: {left:?}");
    Ok(())
}

fn step(title: &str) {
    println!("\n== {title}");
}

fn print_devices(devices: &[api::Device]) {
    for d in devices {
        let numa =
            d.topology.nodes.first().map(|n| format!("NUMA node {}", n.ID)).unwrap_or_else(|| "no NUMA node".into());
        println!("  {:<16} {:<9} {numa}", d.ID, d.health);
    }
}
