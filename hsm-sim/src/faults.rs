//! Test-side control of the fault-injecting PKCS#11 module (`hsm-sim/fault-module`, crate `pkcs11-fault`).
//!
//! A test points a process at `libpkcs11_fault.so` instead of SoftHSM, sets [`TARGET_ENV`] and
//! [`CONTROL_ENV`] in that process's environment, and rewrites the control file with
//! [`FaultControl::set`] while the process runs. The module re-reads the file on every PKCS#11 call,
//! so a change applies to the very next call. The syntax is documented in `fault-module/README.md`.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use thiserror::Error;

/// Environment variable naming the real PKCS#11 module the fault module forwards to (default: SoftHSM).
pub const TARGET_ENV: &str = "PKCS11_FAULT_TARGET";
/// Environment variable naming the control file.
pub const CONTROL_ENV: &str = "PKCS11_FAULT_CONTROL";
/// Environment variable naming the call log (one line per PKCS#11 call); unset means no log.
pub const LOG_ENV: &str = "PKCS11_FAULT_LOG";
/// Environment variable overriding where [`fault_module_path`] looks for the built module.
pub const MODULE_ENV: &str = "PKCS11_FAULT_MODULE";
/// File name of the built module.
pub const MODULE_FILE: &str = "libpkcs11_fault.so";

/// One fault; a control file holds any number of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// `function` (e.g. `C_Sign`) returns `rv` (e.g. `CKR_DEVICE_ERROR`) without reaching the real
    /// module, for the next `times` calls, or for every call while the fault is set when `None`.
    Fail {
        /// The PKCS#11 function name.
        function: &'static str,
        /// The `CKR_` name to return.
        rv: &'static str,
        /// How many calls fail; `None` for "until removed".
        times: Option<u32>,
    },
    /// Like [`Fault::Fail`], but only calls whose `CK_MECHANISM` is `mechanism` fail, so that one key
    /// can fail while another keeps working: `C_SignInit` with `CKM_ECDSA` fails the audit log's
    /// checkpoint signatures, while the RSA CA key (`CKM_SHA256_RSA_PKCS`) still signs (with a
    /// `rv` the CA does not treat as a device error, e.g. `CKR_KEY_FUNCTION_NOT_PERMITTED`). Only
    /// functions taking a mechanism accept it (`C_SignInit`, `C_VerifyInit`, `C_EncryptInit`, ...).
    FailMechanism {
        /// The PKCS#11 function name.
        function: &'static str,
        /// The `CKR_` name to return.
        rv: &'static str,
        /// The `CKM_` name (or a hexadecimal value such as `0x1041`) of the calls that fail.
        mechanism: &'static str,
        /// How many calls fail; `None` for "until removed".
        times: Option<u32>,
    },
    /// Every call of `function` is delayed by `millis` before it is forwarded.
    Latency {
        /// The PKCS#11 function name.
        function: &'static str,
        /// The delay in milliseconds.
        millis: u64,
    },
    /// `C_OpenSession` returns `CKR_SESSION_COUNT` while this many sessions are open.
    SessionLimit(u32),
    /// The next `times` signatures of at least `min_len` bytes that `C_Sign` returns (every one while
    /// the fault is set, when `None`) come back `CKR_OK` with their last bit flipped: a token that
    /// signs wrongly. `min_len` picks the key: 256 bytes and more is an RSA-2048+ CA key, never
    /// the P-256 audit key's 64-byte signatures.
    CorruptSignature {
        /// How many signatures to corrupt; `None` for "until removed".
        times: Option<u32>,
        /// Shorter signatures are left alone.
        min_len: usize,
    },
}

impl Fault {
    fn line(&self) -> String {
        match self {
            Fault::Fail {
                function,
                rv,
                times: Some(times),
            } => format!("fail {function} {rv} {times}"),
            Fault::Fail {
                function,
                rv,
                times: None,
            } => format!("fail {function} {rv}"),
            Fault::FailMechanism {
                function,
                rv,
                mechanism,
                times: Some(times),
            } => format!("fail {function} {rv} {times} mechanism={mechanism}"),
            Fault::FailMechanism {
                function,
                rv,
                mechanism,
                times: None,
            } => format!("fail {function} {rv} mechanism={mechanism}"),
            Fault::Latency { function, millis } => format!("latency {function} {millis}"),
            Fault::SessionLimit(limit) => format!("session-limit {limit}"),
            Fault::CorruptSignature {
                times: Some(times),
                min_len,
            } => format!("corrupt C_Sign {times} min-length={min_len}"),
            Fault::CorruptSignature { times: None, min_len } => format!("corrupt C_Sign min-length={min_len}"),
        }
    }
}

/// What can go wrong while driving the fault module.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum FaultError {
    /// The control file could not be written.
    #[error("cannot write the fault control file {path}: {source}")]
    Write {
        /// The control file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The module has not been built (integration tests do not build other packages' cdylibs).
    #[error(
        "the fault-injecting PKCS#11 module is not built ({0} is missing): run `cargo build -p pkcs11-fault{1}` first"
    )]
    ModuleNotBuilt(PathBuf, &'static str),
    /// The path of the running executable is unknown.
    #[error("cannot find the running test executable: {0}")]
    CurrentExe(std::io::Error),
}

/// Writes the control file a fault module reads.
#[derive(Debug)]
pub struct FaultControl {
    path: PathBuf,
    /// Written into every file so that setting the same faults twice still reads as a change (the
    /// module resets its one-off counters only when the content changes).
    generation: AtomicU64,
}

impl FaultControl {
    /// A controller for the control file at `path`; the file is written by [`FaultControl::set`].
    pub fn new(path: &Path) -> FaultControl {
        FaultControl {
            path: path.to_path_buf(),
            generation: AtomicU64::new(0),
        }
    }

    /// The control file, to pass as [`CONTROL_ENV`].
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Replaces every fault in force with `faults` (one-off counters start afresh).
    pub fn set(&self, faults: &[Fault]) -> Result<(), FaultError> {
        let generation = self.generation.fetch_add(1, Ordering::Relaxed);
        let mut text = format!("# written by hsm_sim::faults, generation {generation}\n");
        for fault in faults {
            let _ = writeln!(text, "{}", fault.line());
        }
        // Write a sibling and rename it over the control file, so the module never reads half a file.
        let temporary = self.path.with_extension("tmp");
        let write_error = |source| FaultError::Write {
            path: self.path.clone(),
            source,
        };
        fs::write(&temporary, text).map_err(write_error)?;
        fs::rename(&temporary, &self.path).map_err(write_error)
    }

    /// Removes every fault.
    pub fn clear(&self) -> Result<(), FaultError> {
        self.set(&[])
    }
}

/// The call log a fault module writes when [`LOG_ENV`] is set: one line `FUNCTION CKR_NAME` per call,
/// with ` injected` appended when the module returned the value itself.
#[derive(Debug, Clone)]
pub struct CallLog {
    path: PathBuf,
}

impl CallLog {
    /// The log at `path`, to pass as [`LOG_ENV`].
    pub fn new(path: &Path) -> CallLog {
        CallLog {
            path: path.to_path_buf(),
        }
    }

    /// The log file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every line logged so far (none when the log does not exist yet).
    pub fn lines(&self) -> Vec<String> {
        fs::read_to_string(&self.path)
            .map(|text| text.lines().map(str::to_owned).collect())
            .unwrap_or_default()
    }

    /// How many calls of `function` were logged, injected or forwarded.
    pub fn calls(&self, function: &str) -> usize {
        self.lines()
            .iter()
            .filter(|line| line.split(' ').next() == Some(function))
            .count()
    }

    /// How many calls of `function` the module answered itself with `rv`.
    pub fn injected(&self, function: &str, rv: &str) -> usize {
        let expected = format!("{function} {rv} injected");
        self.lines().iter().filter(|line| **line == expected).count()
    }
}

/// Finds the built fault module next to the running test: `target/<profile>/libpkcs11_fault.so`
/// ([`MODULE_ENV`] overrides the search).
pub fn fault_module_path() -> Result<PathBuf, FaultError> {
    if let Some(path) = std::env::var_os(MODULE_ENV) {
        let path = PathBuf::from(path);
        return if path.exists() {
            Ok(path)
        } else {
            Err(FaultError::ModuleNotBuilt(path, ""))
        };
    }
    let executable = std::env::current_exe().map_err(FaultError::CurrentExe)?;
    // Test binaries live in target/<profile>/deps/, binaries and examples one level up or beside it.
    let directory = executable.parent().unwrap_or(Path::new("."));
    let profile_directory = if directory.file_name().is_some_and(|name| name == "deps") {
        directory.parent().unwrap_or(directory)
    } else {
        directory
    };
    let path = profile_directory.join(MODULE_FILE);
    if path.exists() {
        return Ok(path);
    }
    let release = if profile_directory.file_name().is_some_and(|name| name == "release") {
        " --release"
    } else {
        ""
    };
    Err(FaultError::ModuleNotBuilt(path, release))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_file_lists_one_fault_per_line_and_changes_at_every_set() {
        let temp = tempfile::tempdir().expect("tempdir");
        let control = FaultControl::new(&temp.path().join("faults"));
        let faults = [
            Fault::Fail {
                function: "C_Sign",
                rv: "CKR_DEVICE_ERROR",
                times: None,
            },
            Fault::Fail {
                function: "C_Login",
                rv: "CKR_PIN_INCORRECT",
                times: Some(2),
            },
            Fault::Latency {
                function: "C_Sign",
                millis: 200,
            },
            Fault::SessionLimit(1),
            Fault::FailMechanism {
                function: "C_SignInit",
                rv: "CKR_FUNCTION_FAILED",
                mechanism: "CKM_ECDSA",
                times: None,
            },
            Fault::FailMechanism {
                function: "C_SignInit",
                rv: "CKR_DEVICE_ERROR",
                mechanism: "0x1041",
                times: Some(3),
            },
        ];
        control.set(&faults).expect("set");
        let first = fs::read_to_string(control.path()).expect("read");
        let lines: Vec<&str> = first.lines().skip(1).collect();
        assert_eq!(
            lines,
            [
                "fail C_Sign CKR_DEVICE_ERROR",
                "fail C_Login CKR_PIN_INCORRECT 2",
                "latency C_Sign 200",
                "session-limit 1",
                "fail C_SignInit CKR_FUNCTION_FAILED mechanism=CKM_ECDSA",
                "fail C_SignInit CKR_DEVICE_ERROR 3 mechanism=0x1041"
            ]
        );
        control.set(&faults).expect("set again");
        assert_ne!(fs::read_to_string(control.path()).expect("read"), first);
        control.clear().expect("clear");
        assert_eq!(fs::read_to_string(control.path()).expect("read").lines().count(), 1);
    }

    #[test]
    fn call_log_counts_calls_and_injections() {
        let temp = tempfile::tempdir().expect("tempdir");
        let path = temp.path().join("calls");
        let log = CallLog::new(&path);
        assert_eq!(log.calls("C_Login"), 0);
        fs::write(
            &path,
            "C_Login CKR_PIN_INCORRECT injected\nC_LoginX CKR_OK\nC_Login CKR_OK\n",
        )
        .expect("write");
        assert_eq!(log.calls("C_Login"), 2);
        assert_eq!(log.injected("C_Login", "CKR_PIN_INCORRECT"), 1);
    }
}
