//! SoftHSM2 provisioning for dev mode and tests: a private token directory per run, never a shared token.
//!
//! A provisioned directory holds `softhsm2.conf` and `tokens/`. Point `SOFTHSM2_CONF` at the conf file
//! before the process first calls `C_Initialize` (see [`set_softhsm2_conf`]), then find the slot by
//! token label: SoftHSM assigns a new slot id at every token init.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use thiserror::Error;

pub mod faults;

/// Where Debian, Ubuntu and Fedora install the SoftHSM2 PKCS#11 module.
const MODULE_CANDIDATES: &[&str] = &[
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib64/pkcs11/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
];

/// What can go wrong while provisioning a SoftHSM token.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ProvisionError {
    /// The SoftHSM2 module or `softhsm2-util` is not installed.
    #[error("SoftHSM2 is not installed ({0}); install it with `apt-get install -y softhsm2`")]
    NotInstalled(String),
    /// A file or directory could not be created or read.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// `softhsm2-util --init-token` failed; its own message is passed on (it never echoes PINs).
    #[error("softhsm2-util --init-token failed: {0}")]
    InitToken(String),
    /// `SOFTHSM2_CONF` can only be set while the process has a single thread.
    #[error("SOFTHSM2_CONF must be set before any other thread starts (this process has {0} threads)")]
    NotSingleThreaded(usize),
}

/// A SoftHSM token directory owned by one process (or one replica), with its conf file.
#[derive(Debug, Clone)]
pub struct TokenDirectory {
    /// The directory holding `softhsm2.conf` and `tokens/`.
    pub root: PathBuf,
}

impl TokenDirectory {
    /// Path of the `softhsm2.conf` to export as `SOFTHSM2_CONF`.
    pub fn conf_path(&self) -> PathBuf {
        self.root.join("softhsm2.conf")
    }

    /// Path of the directory SoftHSM keeps its token files in.
    pub fn tokens_path(&self) -> PathBuf {
        self.root.join("tokens")
    }

    /// Creates (or reuses) `root` with a `tokens/` directory and a `softhsm2.conf` pointing at it.
    pub fn create(root: &Path) -> Result<Self, ProvisionError> {
        let directory = TokenDirectory {
            root: root.to_path_buf(),
        };
        let tokens = directory.tokens_path();
        fs::create_dir_all(&tokens).map_err(|source| io_error("create", &tokens, source))?;
        fs::set_permissions(&tokens, fs::Permissions::from_mode(0o700))
            .map_err(|source| io_error("set permissions on", &tokens, source))?;
        let conf = format!(
            "# Written by hsm-sim: a private SoftHSM2 token directory.\n\
             directories.tokendir = {}\n\
             objectstore.backend = file\n\
             log.level = ERROR\n\
             slots.removable = false\n",
            tokens.display()
        );
        let conf_path = directory.conf_path();
        fs::write(&conf_path, conf).map_err(|source| io_error("write", &conf_path, source))?;
        Ok(directory)
    }

    /// True when a token with `label` has been initialised in this directory.
    ///
    /// SoftHSM stores the label in each token's `token.object`; a byte search avoids starting
    /// a PKCS#11 context (at most one per process) just to list tokens.
    pub fn has_token(&self, label: &str) -> Result<bool, ProvisionError> {
        let tokens = self.tokens_path();
        let entries = match fs::read_dir(&tokens) {
            Ok(entries) => entries,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(source) => return Err(io_error("read", &tokens, source)),
        };
        // Token labels are padded with spaces to 32 bytes in the token file.
        let mut padded = label.as_bytes().to_vec();
        padded.resize(32, b' ');
        for entry in entries {
            let entry = entry.map_err(|source| io_error("read", &tokens, source))?;
            let object = entry.path().join("token.object");
            match fs::read(&object) {
                Ok(bytes) if bytes.windows(padded.len()).any(|window| window == padded) => return Ok(true),
                Ok(_) => {}
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(io_error("read", &object, source)),
            }
        }
        Ok(false)
    }

    /// Initialises a new token with `label` in this directory's free slot.
    ///
    /// The PINs reach `softhsm2-util` through its command line, which other local users can see in
    /// the process list: acceptable for dev and test tokens only. Production tokens are made by the
    /// HSM vendor's own tools.
    pub fn init_token(&self, label: &str, so_pin: &str, user_pin: &str) -> Result<(), ProvisionError> {
        let util = find_util()?;
        let output = Command::new(util)
            .env("SOFTHSM2_CONF", self.conf_path())
            .args([
                "--init-token",
                "--free",
                "--label",
                label,
                "--so-pin",
                so_pin,
                "--pin",
                user_pin,
            ])
            .output()
            .map_err(|source| io_error("run", Path::new("softhsm2-util"), source))?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let stdout = String::from_utf8_lossy(&output.stdout);
            return Err(ProvisionError::InitToken(format!(
                "{} {}",
                stdout.trim(),
                stderr.trim()
            )));
        }
        Ok(())
    }
}

/// Finds the SoftHSM2 PKCS#11 module (`SOFTHSM2_MODULE` overrides the search).
pub fn find_module() -> Result<PathBuf, ProvisionError> {
    if let Some(path) = std::env::var_os("SOFTHSM2_MODULE") {
        return Ok(PathBuf::from(path));
    }
    MODULE_CANDIDATES
        .iter()
        .map(PathBuf::from)
        .find(|path| path.exists())
        .ok_or_else(|| ProvisionError::NotInstalled("libsofthsm2.so not found".to_owned()))
}

fn find_util() -> Result<PathBuf, ProvisionError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/local/bin")])
        .map(|dir| dir.join("softhsm2-util"))
        .find(|candidate| candidate.exists())
        .ok_or_else(|| ProvisionError::NotInstalled("softhsm2-util not found".to_owned()))
}

/// Writes a secret (a dev PIN) to a new file readable by its owner only; refuses to overwrite.
pub fn write_secret_file(path: &Path, secret: &str) -> Result<(), ProvisionError> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| io_error("create", path, source))?;
    file.write_all(secret.as_bytes())
        .map_err(|source| io_error("write", path, source))?;
    file.sync_all().map_err(|source| io_error("sync", path, source))
}

/// Sets `SOFTHSM2_CONF` for this process, which SoftHSM reads in `C_Initialize`.
///
/// Changing the environment is only sound while no other thread can read it, so this refuses
/// unless the process has exactly one thread: call it from `main` before building a runtime.
pub fn set_softhsm2_conf(conf_path: &Path) -> Result<(), ProvisionError> {
    let threads = thread_count();
    if threads != 1 {
        return Err(ProvisionError::NotSingleThreaded(threads));
    }
    // SAFETY: the process has a single thread (checked just above through /proc/self/task), so no
    // other thread can be reading or writing the environment concurrently.
    #[allow(
        unsafe_code,
        reason = "the crate's one unsafe block: set_var while single-threaded, see SAFETY"
    )]
    unsafe {
        std::env::set_var("SOFTHSM2_CONF", conf_path);
    }
    Ok(())
}

fn thread_count() -> usize {
    // Linux lists one directory per thread; elsewhere we cannot tell, so report "many".
    fs::read_dir("/proc/self/task")
        .map(|entries| entries.count())
        .unwrap_or(usize::MAX)
}

fn io_error(action: &'static str, path: &Path, source: std::io::Error) -> ProvisionError {
    ProvisionError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conf_points_at_private_token_directory() {
        let temp = tempfile::tempdir().expect("tempdir");
        let directory = TokenDirectory::create(temp.path()).expect("create");
        let conf = fs::read_to_string(directory.conf_path()).expect("read conf");
        assert!(conf.contains(&format!("directories.tokendir = {}", directory.tokens_path().display())));
        assert!(!directory.has_token("nothing-here").expect("has_token"));
    }

    #[test]
    fn init_token_is_found_by_label() {
        if find_util().is_err() {
            panic!("softhsm2-util is required for the tests: apt-get install -y softhsm2");
        }
        let temp = tempfile::tempdir().expect("tempdir");
        let directory = TokenDirectory::create(temp.path()).expect("create");
        directory
            .init_token("hsm-sim-test", "so-pin-1234", "user-pin-1234")
            .expect("init");
        assert!(directory.has_token("hsm-sim-test").expect("has_token"));
        assert!(!directory.has_token("another-label").expect("has_token"));
    }

    #[test]
    fn secret_file_is_private_and_never_overwritten() {
        let temp = tempfile::tempdir().expect("tempdir");
        let path = temp.path().join("pin");
        write_secret_file(&path, "1234").expect("write");
        let mode = fs::metadata(&path).expect("metadata").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(write_secret_file(&path, "5678").is_err());
        assert_eq!(fs::read_to_string(&path).expect("read"), "1234");
    }

    #[test]
    fn refuses_to_set_environment_with_threads_running() {
        // The test harness runs this test on a thread of its own, so the process has several.
        let error = set_softhsm2_conf(Path::new("/nonexistent")).expect_err("must refuse");
        assert!(matches!(error, ProvisionError::NotSingleThreaded(_)));
    }
}
