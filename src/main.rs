use k8s_accelerator_devplugin::cli::{self, BackendChoice, Command};
use k8s_accelerator_devplugin::daemon::{self, Settings};
use k8s_accelerator_devplugin::discovery::{Backend, Roots};
use k8s_accelerator_devplugin::routing::Routes;
use k8s_accelerator_devplugin::{control, logging, probe};
use std::process::ExitCode;

/// gRPC core's own messages are about its internals, and it repeats its error lines on every retry of
/// something we already report in our words (a failed bind, a refused connection). So at the default
/// levels it is silent (`GRPC_VERBOSITY=NONE`, unless the environment sets it); at `debug` its errors, and
/// at `trace` its debug lines, go to our log, never straight to stderr. `redirect_log` takes gRPC's
/// verbosity from the `log` crate's maximum level when it is called.
fn quiet_grpc_log(level: log::LevelFilter) {
    let grpc_level = match level {
        log::LevelFilter::Trace => log::LevelFilter::Trace,
        log::LevelFilter::Debug => log::LevelFilter::Warn,
        _ => {
            // Read by gRPC core when it starts, which is after this: nothing else runs yet.
            if std::env::var_os("GRPC_VERBOSITY").is_none() {
                std::env::set_var("GRPC_VERBOSITY", "NONE");
            }
            return;
        }
    };
    log::set_max_level(grpc_level);
    grpcio::redirect_log();
    log::set_max_level(level);
}

fn main() -> ExitCode {
    let options = match cli::parse(std::env::args_os().skip(1)) {
        Ok(Command::Run(options)) => options,
        Ok(Command::Probe(options)) => {
            let named = options.afu_resources.iter().map(|(name, _)| name.as_str());
            return match probe::probe_all(&options.device_plugin_path, &options.resource_name, named) {
                Ok(answer) => {
                    println!("ok: {answer}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("k8s-accelerator-devplugin probe: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        Ok(Command::Help) => {
            print!("{}", cli::USAGE);
            return ExitCode::SUCCESS;
        }
        Ok(Command::Version) => {
            println!("k8s-accelerator-devplugin {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("k8s-accelerator-devplugin: {e} (see --help)");
            return ExitCode::from(2);
        }
    };
    logging::init(options.log_level, options.log_file.as_deref());
    quiet_grpc_log(options.log_level);

    let backend = match options.backend {
        Some(BackendChoice::Intel) => Backend::Intel,
        Some(BackendChoice::Aws) => Backend::Aws { units: options.accel_nbunits.unwrap_or(cli::DEFAULT_UNITS) },
        Some(BackendChoice::AwsFpga) => Backend::AwsFpga,
        None => {
            let (detected, why) = Backend::detect(&options.sysfs_root, options.accel_nbunits, cli::DEFAULT_UNITS);
            log::info!("backend {} (detected: {why})", detected.name());
            detected
        }
    };
    let afu = !options.afu_resources.is_empty() || options.afu_auto;
    if afu && backend != Backend::Intel {
        // AFU IDs are read from Intel FPGA ports: with AWS units this can never route anything.
        eprintln!(
            "k8s-accelerator-devplugin: --afu-resource needs the intel backend, and the backend is {}",
            backend.name()
        );
        return ExitCode::from(2);
    }
    let routes = Routes::new(&options.resource_name, &options.afu_resources, options.afu_auto);
    let afu_routes: Vec<String> = options.afu_resources.iter().map(|(name, id)| format!("{name}={id}")).collect();
    let intervals = if !backend.is_dynamic() {
        String::new()
    } else if options.scan_interval <= options.health_interval {
        // Every check is then a full discovery, which reads the health too (see the event loop).
        format!(", discovery and health every {:?}", options.scan_interval)
    } else {
        format!(", discovery every {:?}, health every {:?}", options.scan_interval, options.health_interval)
    };
    log::info!(
        "k8s-accelerator-devplugin {} starting: resource {}{}{}, backend {}{intervals}, device-plugins directory {}{}",
        env!("CARGO_PKG_VERSION"),
        options.resource_name,
        if afu_routes.is_empty() { String::new() } else { format!(", AFU resources {}", afu_routes.join(" ")) },
        if options.afu_auto { ", other AFUs under their own resource" } else { "" },
        backend.name(),
        options.device_plugin_path.display(),
        options.cdi_spec_dir.as_ref().map(|d| format!(", CDI specs in {}", d.display())).unwrap_or_default()
    );
    if options.cdi_spec_dir.is_some() && matches!(backend, Backend::Aws { .. }) {
        log::info!("--cdi-spec-dir: AWS units have no device node, so no CDI spec is written and none is named");
    }
    if backend == Backend::Intel {
        log::debug!("open descriptors: up to {}", daemon::raise_descriptor_limit());
    }
    let settings = Settings {
        backend,
        routes,
        device_plugin_path: options.device_plugin_path,
        cdi_spec_dir: options.cdi_spec_dir,
        roots: Roots { sysfs: options.sysfs_root, dev: options.dev_root },
        scan_interval: options.scan_interval,
        health_interval: options.health_interval,
    };

    let started = control::new().and_then(|(control, handle)| {
        handle.register_signals()?;
        Ok(control)
    });
    let control = match started {
        Ok(control) => control,
        Err(e) => {
            log::error!("cannot set up signal handling: {e}");
            return ExitCode::FAILURE;
        }
    };
    match daemon::run(settings, control) {
        Ok(()) => {
            log::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(e @ daemon::Error::Config(_)) => {
            log::error!("{e}");
            ExitCode::from(2)
        }
        Err(e) => {
            log::error!("{e}");
            ExitCode::FAILURE
        }
    }
}
