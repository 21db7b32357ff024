//! The reference client's command line (`e2ee-client`) as the end-to-end tests run it: against a
//! dev server as the `sync-server` principal, one device directory per call, one shared storage.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use super::{DevServer, output_text};

impl Cli {
    /// The client against `server` over mTLS as `sync-server`, with folder data in `storage`.
    pub fn for_server(server: &DevServer, storage: PathBuf) -> Cli {
        let (ca, certificate, key) = server.tls_files("sync-server").expect("mTLS");
        Cli {
            binary: client_binary(),
            ca: server.endpoint.clone(),
            tls: vec![
                "--ca-cert".into(),
                ca.into(),
                "--cert".into(),
                certificate.into(),
                "--key".into(),
                key.into(),
            ],
            storage,
        }
    }
}

/// The workspace root (this file's crate is `ca-service`, one level down).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("ca-service sits in the workspace")
        .to_path_buf()
}

/// Builds the `e2ee-client` binary (a no-op when `cargo test --workspace` already did) and returns its path.
/// Cargo gives tests the path of their own package's binaries only, and the client is another package.
pub fn client_binary() -> PathBuf {
    client_package_binary("e2ee-client")
}

/// Builds the client package's binary `name` (`e2ee-client`, or the officers' `e2ee-recovery`).
pub fn client_package_binary(name: &str) -> PathBuf {
    // target/<profile>/deps/<this test> → target/<profile>/e2ee-client, built with the same profile.
    let test_binary = std::env::current_exe().expect("current exe");
    let profile_dir = test_binary
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps")
        .to_path_buf();
    let mut build = Command::new(env!("CARGO"));
    build
        .args(["build", "--quiet", "-p", "e2ee-client", "--bin", name])
        .current_dir(workspace_root());
    if profile_dir.file_name().is_some_and(|name| name == "release") {
        build.arg("--release");
    }
    assert!(
        build.status().expect("run cargo build").success(),
        "cannot build {name}"
    );
    let binary = profile_dir.join(name);
    assert!(binary.exists(), "{} was not built", binary.display());
    binary
}

/// One person's use of the command line: the CA, the shared storage, and the binary.
pub struct Cli {
    pub binary: PathBuf,
    pub ca: String,
    /// `--ca-cert`, `--cert` and `--key` of the sync server's dev principal.
    pub tls: Vec<std::ffi::OsString>,
    pub storage: PathBuf,
}

impl Cli {
    pub fn run(&self, device: &Path, args: &[&str], stdin: &str) -> Output {
        use std::io::Write;
        let mut child = Command::new(&self.binary)
            .arg("--ca")
            .arg(&self.ca)
            .args(&self.tls)
            .arg("--dir")
            .arg(device)
            .arg("--storage")
            .arg(&self.storage)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn e2ee-client");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(stdin.as_bytes())
            .expect("write stdin");
        child.wait_with_output().expect("e2ee-client output")
    }

    /// Runs a command that must succeed; returns its stdout.
    pub fn ok(&self, device: &Path, args: &[&str]) -> String {
        self.ok_with_input(device, args, "")
    }

    pub fn ok_with_input(&self, device: &Path, args: &[&str], stdin: &str) -> String {
        let output = self.run(device, args, stdin);
        assert!(
            output.status.success(),
            "e2ee-client {args:?} failed:\n{}",
            output_text(&output)
        );
        String::from_utf8(output.stdout).expect("utf-8 stdout")
    }

    /// Runs a command that must fail; returns its stderr.
    pub fn fails(&self, device: &Path, args: &[&str], stdin: &str) -> String {
        let output = self.run(device, args, stdin);
        assert!(
            !output.status.success(),
            "e2ee-client {args:?} succeeded:\n{}",
            output_text(&output)
        );
        String::from_utf8(output.stderr).expect("utf-8 stderr")
    }
}

/// `get --folder FOLDER FILE --out OUT`.
pub fn get<'a>(folder: &'a str, file: &'a str, out: &'a Path) -> [&'a str; 6] {
    ["get", "--folder", folder, file, "--out", out.to_str().expect("path")]
}

/// The 12 recovery words `enroll` prints once: the indented line of twelve lowercase words.
pub fn recovery_words(enroll_output: &str) -> String {
    enroll_output
        .lines()
        .map(str::trim)
        .find(|line| {
            let words: Vec<&str> = line.split(' ').collect();
            words.len() == 12
                && words
                    .iter()
                    .all(|word| !word.is_empty() && word.chars().all(|c| c.is_ascii_lowercase()))
        })
        .unwrap_or_else(|| panic!("no recovery words in:\n{enroll_output}"))
        .to_owned()
}
