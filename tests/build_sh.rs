//! build.sh's argument handling and its two-stage image flow, with a stand-in `docker` that records what
//! it is asked to do (no docker engine is needed).

use k8s_accelerator_devplugin::sim::TempDir;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const FAKE_DOCKER: &str = r#"#!/usr/bin/env bash
# Records every call; plays the parts of docker that build.sh uses.
echo "docker $*" >> "$FAKE_DOCKER_LOG"
case "$1" in
    build)
        # The builder image stage 1 starts from, as the Dockerfile given with -f says.
        args=("$@")
        for i in "${!args[@]}"; do
            if [ "${args[$i]}" = -f ]; then grep '^FROM' "${args[$((i + 1))]}" >> "$FAKE_DOCKER_LOG.from"; fi
        done
        # The last argument is the context; stage 2's must hold the binary and the Dockerfile.
        ctx="${*: -1}"
        if [ "$ctx" != "." ]; then
            [ -x "$ctx/k8s-accelerator-devplugin" ] && [ -f "$ctx/Dockerfile" ] || { echo "bad context" >&2; exit 1; }
        fi
        ;;
    container) echo "c0ffee" ;;
    cp)
        [ "${FAKE_DOCKER_FAIL:-}" = cp ] && { echo "no such file" >&2; exit 1; }
        printf '#!/bin/true\n' > "$3" && chmod +x "$3"
        ;;
    rm) ;;
    *) echo "unexpected docker call: $*" >&2; exit 1 ;;
esac
"#;

struct Fake {
    dir: TempDir,
}

impl Fake {
    fn new() -> Fake {
        let dir = TempDir::new("fakedocker").unwrap();
        let docker = dir.path().join("docker");
        std::fs::write(&docker, FAKE_DOCKER).unwrap();
        std::fs::set_permissions(&docker, std::fs::Permissions::from_mode(0o755)).unwrap();
        Fake { dir }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("calls.log")
    }

    fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.log_path()).unwrap_or_default().lines().map(str::to_owned).collect()
    }

    /// The FROM line of each Dockerfile stage 1 was built with.
    fn builder_froms(&self) -> Vec<String> {
        let path = format!("{}.from", self.log_path().display());
        std::fs::read_to_string(path).unwrap_or_default().lines().map(str::to_owned).collect()
    }

    fn run(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        self.run_in(Path::new(env!("CARGO_MANIFEST_DIR")), args, env)
    }

    /// build.sh called from `cwd`.
    fn run_in(&self, cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
        let path = format!("{}:{}", self.dir.path().display(), std::env::var("PATH").unwrap_or_default());
        Command::new("bash")
            .current_dir(cwd)
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("build.sh"))
            .args(args)
            .env("PATH", path)
            .env("FAKE_DOCKER_LOG", self.log_path())
            .envs(env.iter().copied())
            .output()
            .unwrap()
    }
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

#[test]
fn help_and_bad_arguments() {
    let fake = Fake::new();
    let out = fake.run(&["--help"], &[]);
    assert_eq!(out.status.code(), Some(0));
    for word in ["static", "image", "--tag", "--builder", "--binary", "Dockerfile.build", "FROM scratch"] {
        assert!(text(&out).contains(word), "help lacks {word}");
    }
    for (args, needle) in [
        (&["frobnicate"][..], "unknown subcommand frobnicate"),
        (&["image", "--bogus"], "unknown option --bogus"),
        (&["image", "--tag"], "--tag needs a value"),
        (&["image", "--tag="], "--tag needs a value"),
        (&["static", "--tag", "x"], "static takes no options"),
        (&["image", "--builder"], "--builder needs a value"),
        (&["image", "--builder", "mirror/rust:1", "--binary", "/bin/true"], "exclude each other"),
        (&["image", "--builder", "rust:1.95-slim-bookworm", "--binary", "/bin/true"], "exclude each other"),
        (&["image", "--binary", env!("CARGO_MANIFEST_DIR")], "is not an executable file"),
        (&["image", "--binary", "/nonexistent/k8s-accelerator-devplugin"], "is not an executable file"),
    ] {
        let out = fake.run(args, &[]);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
        assert!(text(&out).contains(needle), "{args:?}: {}", text(&out));
    }
    assert!(fake.calls().is_empty(), "no docker call on bad arguments: {:?}", fake.calls());
}

#[test]
fn image_builds_in_two_stages_and_removes_its_container() {
    let fake = Fake::new();
    let out = fake.run(&["image", "--tag", "registry.example/plugin:1.2"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let calls = fake.calls();
    assert_eq!(calls.len(), 5, "{calls:#?}");
    assert_eq!(calls[0], "docker build --force-rm -f Dockerfile.build -t registry.example/plugin-1.2-builder .");
    assert_eq!(calls[1], "docker container create registry.example/plugin-1.2-builder");
    assert!(calls[2]
        .starts_with("docker cp c0ffee:/src/target/x86_64-unknown-linux-musl/release/k8s-accelerator-devplugin "));
    assert_eq!(calls[3], "docker rm -f c0ffee");
    assert!(calls[4].starts_with("docker build --force-rm -t registry.example/plugin:1.2 /"), "{}", calls[4]);
    let context = calls[4].rsplit(' ').next().unwrap();
    assert!(!Path::new(context).exists(), "the stage-2 context {context} is removed");
}

#[test]
fn a_failed_copy_still_removes_the_temporary_container() {
    let fake = Fake::new();
    let out = fake.run(&[], &[("FAKE_DOCKER_FAIL", "cp")]);
    assert_ne!(out.status.code(), Some(0));
    let calls = fake.calls();
    assert_eq!(calls[0], "docker build --force-rm -f Dockerfile.build -t accelerator-device-plugin-latest-builder .");
    assert_eq!(calls.last().map(String::as_str), Some("docker rm -f c0ffee"), "{calls:#?}");
    assert!(
        !calls.iter().any(|c| c.starts_with("docker build --force-rm -t")),
        "no stage 2 after a failure: {calls:#?}"
    );
}

#[test]
fn another_builder_image_is_written_into_a_temporary_dockerfile() {
    let fake = Fake::new();
    let out = fake.run(&["image", "--builder", "mirror.example/rust:1.95-slim-bookworm"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let calls = fake.calls();
    assert!(calls[0].starts_with("docker build --force-rm -f .Dockerfile.build."), "{calls:#?}");
    assert_eq!(fake.builder_froms(), ["FROM mirror.example/rust:1.95-slim-bookworm"]);
    let generated = calls[0].split(' ').nth(4).unwrap();
    assert!(!Path::new(env!("CARGO_MANIFEST_DIR")).join(generated).exists(), "{generated} is removed");
    // The default builder uses Dockerfile.build as it is.
    let fake = Fake::new();
    assert_eq!(fake.run(&["image"], &[]).status.code(), Some(0));
    assert_eq!(fake.builder_froms(), ["FROM rust:1.95-slim-bookworm"]);
}

#[test]
fn a_binary_built_before_skips_stage_one() {
    let fake = Fake::new();
    let binary = fake.dir.path().join("k8s-accelerator-devplugin");
    std::fs::write(&binary, b"\x7fELF\x02\x01\x01").unwrap();
    std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = fake.run(&["image", "--binary", binary.to_str().unwrap(), "-t", "plugin:ci"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let calls = fake.calls();
    assert_eq!(calls.len(), 1, "{calls:#?}");
    assert!(calls[0].starts_with("docker build --force-rm -t plugin:ci /"), "{}", calls[0]);
    // An executable that is not a binary (a script) is refused.
    let script = fake.dir.path().join("script");
    std::fs::write(&script, "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = fake.run(&["image", "--binary", script.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("is not an ELF binary"), "{}", text(&out));
    // A relative path is the caller's, not the repository's (build.sh changes into it).
    let out = fake.run_in(fake.dir.path(), &["image", "--binary", "k8s-accelerator-devplugin"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

#[test]
fn the_default_builder_image_is_the_same_everywhere() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let read = |f: &str| std::fs::read_to_string(root.join(f)).unwrap();
    let script = read("build.sh");
    let default = script.lines().find_map(|l| l.strip_prefix("DEFAULT_BUILDER=")).expect("DEFAULT_BUILDER in build.sh");
    assert!(read("Dockerfile.build").lines().any(|l| l == format!("FROM {default}")), "Dockerfile.build");
    assert!(
        read("Dockerfile.multistage").lines().any(|l| l == format!("ARG BUILDER_IMAGE={default}")),
        "Dockerfile.multistage"
    );
}
