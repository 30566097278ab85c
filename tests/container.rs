//! The runtime image under a real docker engine, run the way the rendered DaemonSets run it: their image,
//! arguments, security context, liveness command, termination-log path and host mounts (the host paths
//! swapped for a simulated node and kubelet directory). Against the simulated kubelet in the host directory
//! it must register, list, allocate, re-register after a kubelet restart, pass its liveness probe through
//! `docker exec`, and stop with exit code 0 on `docker stop` within the pod's grace period.
//!
//! Needs a docker engine and the image, so it runs only when CI says where things are:
//! - `K8S_ACCEL_TEST_MANIFESTS`: a directory with `<flavour>.json` for the aws, aws-fpga, intel, intel-afu and
//!   intel-cdi flavours, the rendered overlays as JSON
//!   (`kubectl kustomize deploy/overlays/<flavour>` converted from YAML);
//! - the image named in the manifests must exist in the local docker engine (`./build.sh image --binary`).
//!
//! Without `K8S_ACCEL_TEST_MANIFESTS` each test says so and passes.

mod common;

use common::{allocate_for_one, sockets, wait_until, WAIT};
use k8s_accelerator_devplugin::cli::{self, BackendChoice, Command as Cli};
use k8s_accelerator_devplugin::discovery::aws_fpga::Generation;
use k8s_accelerator_devplugin::discovery::{self, Backend, Roots};
use k8s_accelerator_devplugin::routing::Routes;
use k8s_accelerator_devplugin::sim::{AwsDriver, FakeKubelet, Fme, SimNode, TempDir};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The pod settings the test applies, read from a rendered DaemonSet. Every key of the container, its
/// security context and the pod spec is either applied here or known not to matter outside a cluster
/// (scheduling): a key the test does not know fails it, so that a manifest change is never silently left
/// untested.
struct PodSpec {
    image: String,
    args: Vec<String>,
    run_as_user: u64,
    read_only_root: bool,
    no_new_privileges: bool,
    drop_capabilities: Vec<String>,
    seccomp: String,
    liveness: Vec<String>,
    liveness_timeout: Duration,
    termination_log: String,
    grace: Duration,
    /// `docker run` options for resources.limits.
    limits: Vec<String>,
    host_network: bool,
    /// Whether the kubelet would mount a service-account token (automountServiceAccountToken not false).
    service_account_token: bool,
    /// (host path, hostPath type, container path, read-only)
    mounts: Vec<(String, String, String, bool)>,
}

/// Fails on a key of `object` that is not in `known`.
fn only_known_keys(object: &Value, known: &[&str], what: &str) {
    for key in object.as_object().map(|o| o.keys().collect::<Vec<_>>()).unwrap_or_default() {
        assert!(known.contains(&key.as_str()), "{what} has `{key}`, which tests/container.rs does not apply: add it");
    }
}

/// `100m` → `0.1`, `2` → `2`: a Kubernetes CPU quantity as docker's --cpus.
fn cpus(q: &str) -> String {
    match q.strip_suffix('m') {
        Some(milli) => format!("{}", milli.parse::<f64>().expect("millicores") / 1000.0),
        None => q.to_string(),
    }
}

/// `64Mi` → `64m`: a Kubernetes memory quantity as docker's --memory.
fn memory(q: &str) -> String {
    let (n, unit) = q.split_at(q.find(|c: char| !c.is_ascii_digit()).unwrap_or(q.len()));
    match unit {
        "Mi" => format!("{n}m"),
        "Gi" => format!("{n}g"),
        "Ki" => format!("{n}k"),
        "" => n.to_string(),
        other => panic!("memory unit {other} not handled"),
    }
}

fn manifests() -> Option<PathBuf> {
    match std::env::var_os("K8S_ACCEL_TEST_MANIFESTS") {
        Some(dir) => Some(PathBuf::from(dir)),
        None => {
            eprintln!("skipping: K8S_ACCEL_TEST_MANIFESTS is not set (CI sets it, with a docker engine running)");
            None
        }
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect()).unwrap_or_default()
}

fn pod_spec(dir: &Path, flavour: &str) -> PodSpec {
    let path = dir.join(format!("{flavour}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let doc: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(doc["kind"], "DaemonSet", "{}", path.display());
    let pod = &doc["spec"]["template"]["spec"];
    // Scheduling keys mean nothing to one container on one machine.
    only_known_keys(
        pod,
        &[
            "containers",
            "volumes",
            "terminationGracePeriodSeconds",
            "hostNetwork",
            "automountServiceAccountToken",
            "priorityClassName",
            "tolerations",
            "nodeSelector",
            "affinity",
        ],
        "the pod spec",
    );
    let containers = pod["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 1, "one container");
    let c = &containers[0];
    only_known_keys(
        c,
        &[
            "name",
            "image",
            "imagePullPolicy",
            "args",
            "resources",
            "securityContext",
            "livenessProbe",
            "terminationMessagePath",
            "volumeMounts",
        ],
        "the container",
    );
    let sc = &c["securityContext"];
    only_known_keys(
        sc,
        &["runAsUser", "readOnlyRootFilesystem", "allowPrivilegeEscalation", "capabilities", "seccompProfile"],
        "the securityContext",
    );
    only_known_keys(&sc["capabilities"], &["drop"], "the capabilities");
    let probe = &c["livenessProbe"];
    only_known_keys(
        probe,
        &["exec", "initialDelaySeconds", "periodSeconds", "timeoutSeconds", "failureThreshold"],
        "the livenessProbe",
    );
    let volumes = pod["volumes"].as_array().expect("volumes");
    let host_path = |name: &str| -> (String, String) {
        let v = volumes.iter().find(|v| v["name"] == name).unwrap_or_else(|| panic!("no volume {name}"));
        only_known_keys(v, &["name", "hostPath"], "a volume");
        let path = v["hostPath"]["path"].as_str().unwrap_or_else(|| panic!("volume {name} is not a hostPath"));
        (path.to_string(), v["hostPath"]["type"].as_str().unwrap_or("").to_string())
    };
    let mounts = c["volumeMounts"]
        .as_array()
        .expect("volumeMounts")
        .iter()
        .map(|m| {
            only_known_keys(m, &["name", "mountPath", "readOnly"], "a volumeMount");
            let (host, kind) = host_path(m["name"].as_str().expect("mount name"));
            (host, kind, m["mountPath"].as_str().expect("mountPath").to_string(), m["readOnly"] == true)
        })
        .collect();
    let limits = &c["resources"]["limits"];
    only_known_keys(limits, &["cpu", "memory"], "resources.limits");
    let mut limit_args = Vec::new();
    if let Some(cpu) = limits["cpu"].as_str() {
        limit_args.extend(["--cpus".to_string(), cpus(cpu)]);
    }
    if let Some(mem) = limits["memory"].as_str() {
        limit_args.extend(["--memory".to_string(), memory(mem)]);
    }
    PodSpec {
        image: c["image"].as_str().expect("image").to_string(),
        args: strings(&c["args"]),
        run_as_user: sc["runAsUser"].as_u64().expect("runAsUser"),
        read_only_root: sc["readOnlyRootFilesystem"] == true,
        no_new_privileges: sc["allowPrivilegeEscalation"] == false,
        drop_capabilities: strings(&sc["capabilities"]["drop"]),
        seccomp: sc["seccompProfile"]["type"].as_str().unwrap_or("Unconfined").to_string(),
        liveness: strings(&probe["exec"]["command"]),
        liveness_timeout: Duration::from_secs(probe["timeoutSeconds"].as_u64().unwrap_or(1)),
        termination_log: c["terminationMessagePath"].as_str().unwrap_or("/dev/termination-log").to_string(),
        grace: Duration::from_secs(pod["terminationGracePeriodSeconds"].as_u64().unwrap_or(30)),
        limits: limit_args,
        host_network: pod["hostNetwork"] == true,
        service_account_token: pod["automountServiceAccountToken"] != false,
        mounts,
    }
}

/// Runs a docker command, killed after `limit` (a stuck engine must not hold CI until its deadline).
fn docker_within(limit: Duration, args: &[&str]) -> (bool, String) {
    let out = Command::new("timeout")
        .arg(format!("{}s", limit.as_secs().max(1)))
        .arg("docker")
        .args(args)
        .output()
        .expect("run docker");
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    if out.status.code() == Some(124) {
        return (false, format!("docker {args:?} did not finish within {limit:?}: {text}"));
    }
    (out.status.success(), text.trim().to_string())
}

fn docker(args: &[&str]) -> (bool, String) {
    docker_within(Duration::from_secs(60), args)
}

/// A running container; removed when dropped, after printing its log if the test failed.
struct Container {
    id: String,
}

impl Container {
    fn log(&self) -> String {
        docker(&["logs", &self.id]).1
    }

    fn pid(&self) -> u32 {
        let (ok, pid) = docker(&["inspect", "-f", "{{.State.Pid}}", &self.id]);
        assert!(ok, "{pid}");
        pid.parse().unwrap_or_else(|_| panic!("pid {pid:?}"))
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- container log ---\n{}\n--- end of container log ---", self.log());
        }
        let _ = docker(&["rm", "-f", &self.id]);
    }
}

/// The simulated host: a node (sysfs and /dev trees), the kubelet's directory, and the termination-log file.
struct Host {
    node: SimNode,
    kubelet: FakeKubelet,
    dir: TempDir,
    termination_log: PathBuf,
}

impl Host {
    /// A host with two Intel ports, or an F1 instance with two slots (XDMA bound to slot 1), or neither.
    fn new(backend: Option<Backend>) -> Host {
        let node = SimNode::new().unwrap();
        match backend {
            Some(Backend::Intel) => {
                node.opae_card("0000:5e:00.0", 0, 0, Some(Fme { instance: 0, ports_num: 1 }), &[(0, 0)]).unwrap();
                node.dfl_card("0000:86:00.0", 1, 0, Some(Fme { instance: 0, ports_num: 1 }), &[(1, 0)]).unwrap();
            }
            Some(Backend::AwsFpga) => {
                let slots = node.aws_instance(Generation::F1, 2).unwrap();
                node.aws_bind(&slots[1], AwsDriver::Xdma(0)).unwrap();
            }
            _ => {}
        }
        // A real host's /dev has a null device, and runc needs it in a /dev mounted over the container's.
        let null = std::ffi::CString::new(node.dev().join("null").to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path; mknod creates a node and touches no memory of ours.
        let made = unsafe { libc::mknod(null.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, 3)) };
        assert_eq!(made, 0, "mknod {:?}: {}", null, std::io::Error::last_os_error());
        // So does /dev/shm: the runtime mounts the pod's shared memory there, over the host's /dev.
        std::fs::create_dir_all(node.dev().join("shm")).unwrap();
        let dir = TempDir::new("kubelet").unwrap();
        let kubelet = FakeKubelet::start(dir.path()).unwrap();
        let termination_log = node.root().join("termination-log");
        std::fs::write(&termination_log, "").unwrap();
        Host { node, kubelet, dir, termination_log }
    }

    /// Where a host path of the manifest is on this simulated host.
    fn map(&self, host_path: &str) -> PathBuf {
        match host_path {
            "/var/lib/kubelet/device-plugins" => self.dir.path().to_path_buf(),
            "/sys" => self.node.sysfs(),
            "/dev" => self.node.dev(),
            "/var/run/cdi" => self.node.root().join("cdi"),
            other => panic!("the manifest mounts {other}, which this test does not simulate: add it"),
        }
    }

    fn run(&self, spec: &PodSpec, name: &str) -> Container {
        // A container of an earlier, killed run of this test.
        let _ = docker(&["rm", "-f", name]);
        let mut args: Vec<String> = vec!["run".into(), "-d".into(), "--pull".into(), "never".into()];
        args.extend(["--name".into(), name.into(), "--label".into(), "k8s-accel-test=1".into()]);
        let network = if spec.host_network { "host" } else { "none" };
        args.extend(["--network".into(), network.into(), "--user".into(), spec.run_as_user.to_string()]);
        args.extend(spec.limits.iter().cloned());
        if spec.read_only_root {
            args.push("--read-only".into());
        }
        if spec.no_new_privileges {
            args.extend(["--security-opt".into(), "no-new-privileges".into()]);
        }
        for cap in &spec.drop_capabilities {
            args.extend(["--cap-drop".into(), cap.clone()]);
        }
        // RuntimeDefault is the engine's default profile: nothing to pass.
        assert_eq!(spec.seccomp, "RuntimeDefault", "the manifests ask for the runtime's default seccomp profile");
        for (host, kind, container, read_only) in &spec.mounts {
            let on_host = self.map(host);
            // Kubernetes refuses to start a pod whose hostPath of type Directory is missing (docker would
            // create it), and creates one of type DirectoryOrCreate.
            match kind.as_str() {
                "Directory" => assert!(on_host.is_dir(), "{} is a directory", on_host.display()),
                "DirectoryOrCreate" => std::fs::create_dir_all(&on_host).unwrap(),
                other => panic!("hostPath type {other} of {host}: add it to tests/container.rs"),
            }
            let ro = if *read_only { ":ro" } else { "" };
            args.extend(["-v".into(), format!("{}:{container}{ro}", on_host.display())]);
        }
        // What the kubelet and the runtime add to every container: a file of the kubelet's at the
        // termination-message path, the pod's shared memory at /dev/shm, and (unless the pod turns it off)
        // the service-account token.
        args.extend(["-v".into(), format!("{}:{}", self.termination_log.display(), spec.termination_log)]);
        args.extend(["--mount".into(), "type=tmpfs,destination=/dev/shm".into()]);
        if spec.service_account_token {
            let token = self.node.root().join("serviceaccount");
            std::fs::create_dir_all(&token).unwrap();
            args.extend(["-v".into(), format!("{}:/var/run/secrets/kubernetes.io/serviceaccount:ro", token.display())]);
        }
        args.push(spec.image.clone());
        args.extend(spec.args.iter().cloned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (ok, out) = docker(&args);
        assert!(ok, "FAILED: docker {args:?}: {out}");
        Container { id: out.lines().last().unwrap_or_default().to_string() }
    }
}

/// The `/proc/<pid>/status` line `key:` of the container's process, as the host sees it.
fn status_field(pid: u32, key: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status.lines().find_map(|l| l.strip_prefix(key)).map(|v| v.trim().to_string()).unwrap_or_default()
}

fn run_flavour(flavour: &str) {
    let Some(dir) = manifests() else { return };
    let spec = pod_spec(&dir, flavour);
    // The manifest's arguments, read the way the plugin reads them.
    let options = match cli::parse(spec.args.iter().map(std::ffi::OsString::from)) {
        Ok(Cli::Run(options)) => options,
        other => panic!("the manifest's args {:?} do not run the plugin: {other:?}", spec.args),
    };
    let intel = options.backend == Some(BackendChoice::Intel);
    let aws_fpga = options.backend == Some(BackendChoice::AwsFpga);
    let found = match options.backend {
        Some(BackendChoice::Intel) => Some(Backend::Intel),
        Some(BackendChoice::AwsFpga) => Some(Backend::AwsFpga),
        _ => None,
    };
    let mut host = Host::new(found);
    let name = format!("k8s-accel-test-{flavour}-{}", std::process::id());
    let container = host.run(&spec, &name);

    // Every resource registers, each with the ports its routing gives it (work that out the way the plugin
    // does, from the simulated host).
    let routes = Routes::new(&options.resource_name, &options.afu_resources, options.afu_auto);
    let mut known = routes.fixed();
    let devices = if let Some(backend) = found {
        discovery::scan(backend, &Roots { sysfs: host.node.sysfs(), dev: host.node.dev() }).devices
    } else {
        discovery::scan(
            Backend::Aws { units: options.accel_nbunits.unwrap_or(cli::DEFAULT_UNITS) },
            &Roots { sysfs: "/".into(), dev: "/".into() },
        )
        .devices
    };
    let expected = routes.route(devices, &mut known);
    for (resource, devices) in &expected {
        let want: Vec<String> = {
            let mut ids: Vec<String> = devices.iter().map(|d| d.id.clone()).collect();
            ids.sort();
            ids
        };
        host.kubelet
            .wait_devices_of(resource, WAIT, |d| {
                d.len() == want.len() && d.iter().all(|d| d.health == "Healthy" && want.contains(&d.ID))
            })
            .unwrap_or_else(|| panic!("no list {want:?} for {resource}\n{}", container.log()));
    }
    // The resource with the devices: Allocate goes there.
    let (resource, devices) = expected.iter().max_by_key(|(_, d)| d.len()).expect("a resource");
    let registered = host.kubelet.registrations().len();

    // The security context reached the process.
    let pid = container.pid();
    assert_eq!(status_field(pid, "NoNewPrivs:"), "1");
    assert_eq!(status_field(pid, "Seccomp:"), "2", "filtered by the default profile");
    for set in ["CapEff:", "CapPrm:", "CapBnd:", "CapAmb:", "CapInh:"] {
        assert_eq!(status_field(pid, set), "0000000000000000", "{set} every capability dropped");
    }
    assert!(status_field(pid, "Uid:").starts_with(&format!("{}\t", spec.run_as_user)));
    let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).expect("mountinfo");
    let root = mountinfo.lines().map(|l| l.split(' ').collect::<Vec<_>>()).find(|f| f.get(4) == Some(&"/"));
    let root_options = root.and_then(|f| f.get(5).copied()).unwrap_or_default();
    assert_eq!(root_options.split(',').next(), Some(if spec.read_only_root { "ro" } else { "rw" }), "{mountinfo}");

    // Allocates: the environment, and for Intel the device nodes with host paths that are right on the host.
    let client = host.kubelet.plugin_for(resource).expect("a client");
    // The host path the plugin hands over is a container path under a host mount: through the manifest's
    // volume it must name the node on the host.
    let check_host_path = |host_path: &str| {
        let (host_dir, _, mount, _) = spec
            .mounts
            .iter()
            .find(|(_, _, m, _)| Path::new(host_path).starts_with(m))
            .unwrap_or_else(|| panic!("{host_path} is under no host mount"));
        let on_host = Path::new(host_dir).join(Path::new(host_path).strip_prefix(mount).unwrap());
        assert_eq!(on_host, Path::new(host_path), "the manifest mounts the host's /dev at /dev");
        let in_simulation = host.map(host_dir).join(Path::new(host_path).strip_prefix(mount).unwrap());
        assert!(in_simulation.exists(), "{} exists on the (simulated) host", in_simulation.display());
    };
    let want_nodes = [("/dev/dfl-port.1", "/dev/dfl-port.1"), ("/dev/intel-fpga-port.0", "/dev/intel-fpga-port.0")];
    if let (true, Some(cdi_dir)) = (intel, &options.cdi_spec_dir) {
        // CDI: names in Allocate, the nodes in the spec that the runtime on the host reads.
        let c = allocate_for_one(&client, &["0000:86:00.0", "0000:5e:00.0"]);
        assert_eq!(c.envs["ACCELERATOR_UNITS"], "0000:86:00.0,0000:5e:00.0");
        assert!(c.devices.is_empty(), "no DeviceSpecs with CDI");
        let names: Vec<&str> = c.cdi_devices.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, [format!("{resource}=0000:86:00.0"), format!("{resource}=0000:5e:00.0")]);
        let (host_dir, _, _, read_only) = spec
            .mounts
            .iter()
            .find(|(_, _, m, _)| Path::new(m) == cdi_dir)
            .unwrap_or_else(|| panic!("the manifest mounts no host directory at {}", cdi_dir.display()));
        assert!(!read_only, "the CDI directory is written");
        assert_eq!(Path::new(host_dir), cdi_dir, "the runtime reads the host's {host_dir}");
        let file = host.map(host_dir).join("k8s-accel-b-com.com_accelerator.json");
        let doc: Value = serde_json::from_str(&std::fs::read_to_string(&file).expect("the spec")).expect("JSON");
        assert_eq!(doc["kind"], resource.as_str());
        let mut nodes: Vec<(String, String)> = doc["devices"]
            .as_array()
            .expect("devices")
            .iter()
            .map(|d| {
                let n = &d["containerEdits"]["deviceNodes"][0];
                (n["path"].as_str().unwrap().to_string(), n["hostPath"].as_str().unwrap().to_string())
            })
            .collect();
        nodes.sort();
        let want: Vec<(String, String)> = want_nodes.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
        assert_eq!(nodes, want);
        for (_, host_path) in &nodes {
            check_host_path(host_path);
        }
    } else if intel {
        assert_eq!(devices.len(), 2, "both simulated ports in {resource}");
        let c = allocate_for_one(&client, &["0000:86:00.0", "0000:5e:00.0"]);
        assert_eq!(c.envs["ACCELERATOR_UNITS"], "0000:86:00.0,0000:5e:00.0");
        let nodes: Vec<(&str, &str)> =
            c.devices.iter().map(|d| (d.container_path.as_str(), d.host_path.as_str())).collect();
        assert_eq!(nodes, want_nodes);
        for d in &c.devices {
            check_host_path(&d.host_path);
        }
    } else if aws_fpga {
        // Slot 1's XDMA nodes, through the manifest's /dev mount; slot 0 has no driver, so no node.
        let c = allocate_for_one(&client, &["1", "0"]);
        assert_eq!(c.envs["ACCELERATOR_UNITS"], "1,0");
        assert_eq!(c.envs["ACCELERATOR_PCI_ADDRESSES"], "0000:00:11.0,0000:00:0f.0");
        assert_eq!(c.devices.len(), 27, "{:?}", c.devices);
        for d in &c.devices {
            assert!(d.container_path.starts_with("/dev/xdma0_"), "{}", d.container_path);
            check_host_path(&d.host_path);
        }
    } else {
        let c = allocate_for_one(&client, &["3", "1"]);
        assert_eq!(c.envs["ACCELERATOR_UNITS"], "3,1");
        assert!(c.devices.is_empty());
    }

    // Every resource re-registers after a kubelet restart.
    host.kubelet.restart().unwrap();
    let again = registered + expected.len();
    host.kubelet.wait_register_calls(again, WAIT).unwrap_or_else(|| panic!("not every resource registered again"));
    for resource in expected.keys() {
        assert!(
            wait_until(WAIT, || host.kubelet.accepted_for(resource) >= 2),
            "{resource} registered again\n{}",
            container.log()
        );
    }

    // The liveness probe of the manifest, through docker exec.
    let mut exec = vec!["exec", container.id.as_str()];
    exec.extend(spec.liveness.iter().map(String::as_str));
    let (ok, out) = docker_within(spec.liveness_timeout, &exec);
    assert!(ok, "liveness probe {:?} within {:?}: {out}", spec.liveness, spec.liveness_timeout);
    assert!(out.starts_with("ok: "), "{out}");
    // It checks every named resource: as many answers as the manifest's probe names resources.
    let probed = 1 + spec.liveness.iter().filter(|a| a.trim_start_matches('-') == "afu-resource").count();
    assert_eq!(out.matches("answers GetDevicePluginOptions").count(), probed, "{out}");

    // docker stop: SIGTERM, then SIGKILL after the pod's grace period.
    let stopping = Instant::now();
    let grace = spec.grace.as_secs().to_string();
    let (ok, out) = docker_within(spec.grace + Duration::from_secs(30), &["stop", "-t", &grace, &container.id]);
    assert!(ok, "{out}");
    let took = stopping.elapsed();
    assert!(took < spec.grace, "stopped after {took:?}, grace {:?}", spec.grace);
    let (_, code) = docker(&["inspect", "-f", "{{.State.ExitCode}}", &container.id]);
    assert_eq!(code, "0", "exit code; log:\n{}", container.log());
    assert!(wait_until(WAIT, || sockets(host.dir.path()) == ["kubelet.sock"]), "{:?}", sockets(host.dir.path()));
    host.kubelet.stop();
}

#[test]
fn the_aws_daemonset_runs_under_docker() {
    run_flavour("aws");
}

#[test]
fn the_aws_fpga_daemonset_runs_under_docker() {
    run_flavour("aws-fpga");
}

#[test]
fn the_intel_daemonset_runs_under_docker() {
    run_flavour("intel");
}

#[test]
fn the_intel_afu_example_runs_under_docker() {
    run_flavour("intel-afu");
}

#[test]
fn the_intel_cdi_daemonset_runs_under_docker() {
    run_flavour("intel-cdi");
}
