//! The fault plan: parses the control file, decides per call whether to inject a fault, tracks open sessions and writes the call log.
//!
//! Safe code only; `ffi` calls in here before and after forwarding each PKCS#11 call.
//! The control file is re-read on every call (a few microseconds for a few lines), so a test's change
//! applies to the very next call; the plan is re-parsed, and its one-off counters start afresh, only
//! when the file's content changes.

use std::collections::HashMap;
use std::fs;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::{LazyLock, Mutex, MutexGuard};
use std::time::Duration;

use cryptoki_sys::*;
use hsm_sim::faults::{CONTROL_ENV, LOG_ENV};

/// The fault plan of this process, configured from the environment at first use.
pub static FAULTS: LazyLock<Faults> = LazyLock::new(Faults::from_env);

/// Every return value by name, for the control file and the call log.
macro_rules! return_values {
    ($($name:ident),* $(,)?) => {
        const RETURN_VALUES: &[(&str, CK_RV)] = &[$((stringify!($name), $name)),*];
    };
}

return_values![
    CKR_OK,
    CKR_CANCEL,
    CKR_HOST_MEMORY,
    CKR_SLOT_ID_INVALID,
    CKR_GENERAL_ERROR,
    CKR_FUNCTION_FAILED,
    CKR_ARGUMENTS_BAD,
    CKR_NO_EVENT,
    CKR_NEED_TO_CREATE_THREADS,
    CKR_CANT_LOCK,
    CKR_ATTRIBUTE_READ_ONLY,
    CKR_ATTRIBUTE_SENSITIVE,
    CKR_ATTRIBUTE_TYPE_INVALID,
    CKR_ATTRIBUTE_VALUE_INVALID,
    CKR_ACTION_PROHIBITED,
    CKR_DATA_INVALID,
    CKR_DATA_LEN_RANGE,
    CKR_DEVICE_ERROR,
    CKR_DEVICE_MEMORY,
    CKR_DEVICE_REMOVED,
    CKR_ENCRYPTED_DATA_INVALID,
    CKR_ENCRYPTED_DATA_LEN_RANGE,
    CKR_AEAD_DECRYPT_FAILED,
    CKR_FUNCTION_CANCELED,
    CKR_FUNCTION_NOT_PARALLEL,
    CKR_FUNCTION_NOT_SUPPORTED,
    CKR_KEY_HANDLE_INVALID,
    CKR_KEY_SIZE_RANGE,
    CKR_KEY_TYPE_INCONSISTENT,
    CKR_KEY_NOT_NEEDED,
    CKR_KEY_CHANGED,
    CKR_KEY_NEEDED,
    CKR_KEY_INDIGESTIBLE,
    CKR_KEY_FUNCTION_NOT_PERMITTED,
    CKR_KEY_NOT_WRAPPABLE,
    CKR_KEY_UNEXTRACTABLE,
    CKR_MECHANISM_INVALID,
    CKR_MECHANISM_PARAM_INVALID,
    CKR_OBJECT_HANDLE_INVALID,
    CKR_OPERATION_ACTIVE,
    CKR_OPERATION_NOT_INITIALIZED,
    CKR_PIN_INCORRECT,
    CKR_PIN_INVALID,
    CKR_PIN_LEN_RANGE,
    CKR_PIN_EXPIRED,
    CKR_PIN_LOCKED,
    CKR_SESSION_CLOSED,
    CKR_SESSION_COUNT,
    CKR_SESSION_HANDLE_INVALID,
    CKR_SESSION_PARALLEL_NOT_SUPPORTED,
    CKR_SESSION_READ_ONLY,
    CKR_SESSION_EXISTS,
    CKR_SESSION_READ_ONLY_EXISTS,
    CKR_SESSION_READ_WRITE_SO_EXISTS,
    CKR_SIGNATURE_INVALID,
    CKR_SIGNATURE_LEN_RANGE,
    CKR_TEMPLATE_INCOMPLETE,
    CKR_TEMPLATE_INCONSISTENT,
    CKR_TOKEN_NOT_PRESENT,
    CKR_TOKEN_NOT_RECOGNIZED,
    CKR_TOKEN_WRITE_PROTECTED,
    CKR_UNWRAPPING_KEY_HANDLE_INVALID,
    CKR_UNWRAPPING_KEY_SIZE_RANGE,
    CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT,
    CKR_USER_ALREADY_LOGGED_IN,
    CKR_USER_NOT_LOGGED_IN,
    CKR_USER_PIN_NOT_INITIALIZED,
    CKR_USER_TYPE_INVALID,
    CKR_USER_ANOTHER_ALREADY_LOGGED_IN,
    CKR_USER_TOO_MANY_TYPES,
    CKR_WRAPPED_KEY_INVALID,
    CKR_WRAPPED_KEY_LEN_RANGE,
    CKR_WRAPPING_KEY_HANDLE_INVALID,
    CKR_WRAPPING_KEY_SIZE_RANGE,
    CKR_WRAPPING_KEY_TYPE_INCONSISTENT,
    CKR_RANDOM_SEED_NOT_SUPPORTED,
    CKR_RANDOM_NO_RNG,
    CKR_DOMAIN_PARAMS_INVALID,
    CKR_CURVE_NOT_SUPPORTED,
    CKR_BUFFER_TOO_SMALL,
    CKR_SAVED_STATE_INVALID,
    CKR_INFORMATION_SENSITIVE,
    CKR_STATE_UNSAVEABLE,
    CKR_CRYPTOKI_NOT_INITIALIZED,
    CKR_CRYPTOKI_ALREADY_INITIALIZED,
    CKR_MUTEX_BAD,
    CKR_MUTEX_NOT_LOCKED,
    CKR_NEW_PIN_MODE,
    CKR_NEXT_OTP,
    CKR_EXCEEDED_MAX_ITERATIONS,
    CKR_FIPS_SELF_TEST_FAILED,
    CKR_LIBRARY_LOAD_FAILED,
    CKR_PIN_TOO_WEAK,
    CKR_PUBLIC_KEY_INVALID,
    CKR_FUNCTION_REJECTED,
    CKR_TOKEN_RESOURCE_EXCEEDED,
    CKR_OPERATION_CANCEL_FAILED,
    CKR_KEY_EXHAUSTED,
    CKR_PENDING,
    CKR_SESSION_ASYNC_NOT_SUPPORTED,
    CKR_SEED_RANDOM_REQUIRED,
    CKR_OPERATION_NOT_VALIDATED,
    CKR_TOKEN_NOT_INITIALIZED,
    CKR_PARAMETER_SET_NOT_SUPPORTED,
];

/// A `CKR_` name, or a hexadecimal value such as `0x80000001` (vendor-defined).
fn parse_return_value(text: &str) -> Option<CK_RV> {
    parse_named(text, RETURN_VALUES)
}

/// A name from `names`, or a hexadecimal value such as `0x1041` (return values and mechanisms are
/// both `CK_ULONG`s).
fn parse_named(text: &str, names: &[(&str, CK_ULONG)]) -> Option<CK_ULONG> {
    if let Some(hex) = text.strip_prefix("0x") {
        return CK_ULONG::from_str_radix(hex, 16).ok();
    }
    names.iter().find(|(name, _)| *name == text).map(|(_, value)| *value)
}

/// Mechanism names the control file accepts in `mechanism=NAME` (the signing mechanisms the CA
/// and the tests use, and their neighbours); any other mechanism is given as a hexadecimal value.
const MECHANISMS: &[(&str, CK_MECHANISM_TYPE)] = &[
    ("CKM_RSA_PKCS", CKM_RSA_PKCS),
    ("CKM_RSA_PKCS_KEY_PAIR_GEN", CKM_RSA_PKCS_KEY_PAIR_GEN),
    ("CKM_RSA_PKCS_OAEP", CKM_RSA_PKCS_OAEP),
    ("CKM_RSA_PKCS_PSS", CKM_RSA_PKCS_PSS),
    ("CKM_SHA256_RSA_PKCS", CKM_SHA256_RSA_PKCS),
    ("CKM_SHA384_RSA_PKCS", CKM_SHA384_RSA_PKCS),
    ("CKM_SHA512_RSA_PKCS", CKM_SHA512_RSA_PKCS),
    ("CKM_SHA256_RSA_PKCS_PSS", CKM_SHA256_RSA_PKCS_PSS),
    ("CKM_SHA384_RSA_PKCS_PSS", CKM_SHA384_RSA_PKCS_PSS),
    ("CKM_SHA512_RSA_PKCS_PSS", CKM_SHA512_RSA_PKCS_PSS),
    ("CKM_EC_KEY_PAIR_GEN", CKM_EC_KEY_PAIR_GEN),
    ("CKM_ECDSA", CKM_ECDSA),
    ("CKM_ECDSA_SHA1", CKM_ECDSA_SHA1),
    ("CKM_ECDSA_SHA256", CKM_ECDSA_SHA256),
    ("CKM_ECDSA_SHA384", CKM_ECDSA_SHA384),
    ("CKM_ECDSA_SHA512", CKM_ECDSA_SHA512),
    ("CKM_EDDSA", CKM_EDDSA),
    ("CKM_SHA256", CKM_SHA256),
    ("CKM_SHA384", CKM_SHA384),
    ("CKM_SHA512", CKM_SHA512),
    ("CKM_AES_KEY_GEN", CKM_AES_KEY_GEN),
    ("CKM_AES_GCM", CKM_AES_GCM),
    ("CKM_AES_KEY_WRAP", CKM_AES_KEY_WRAP),
    ("CKM_AES_KEY_WRAP_PAD", CKM_AES_KEY_WRAP_PAD),
];

/// A `CKM_` name from [`MECHANISMS`], or a hexadecimal value such as `0x1041`.
fn parse_mechanism(text: &str) -> Option<CK_MECHANISM_TYPE> {
    parse_named(text, MECHANISMS)
}

fn return_value_name(value: CK_RV) -> String {
    RETURN_VALUES
        .iter()
        .find(|(_, known)| *known == value)
        .map(|(name, _)| (*name).to_owned())
        .unwrap_or_else(|| format!("{value:#x}"))
}

/// One line of the control file.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Rule {
    /// `fail FUNCTION CKR_NAME [COUNT] [mechanism=CKM_NAME]`.
    Fail {
        function: String,
        rv: CK_RV,
        /// Calls still to fail; `None` fails every call until the line is removed.
        remaining: Option<u64>,
        /// Only calls with this mechanism match (functions taking a `CK_MECHANISM` only); `None`
        /// matches every call.
        mechanism: Option<CK_MECHANISM_TYPE>,
    },
    /// `latency FUNCTION MILLISECONDS`.
    Latency { function: String, delay: Duration },
    /// `session-limit N`.
    SessionLimit(usize),
    /// `corrupt C_Sign [COUNT] [min-length=N]`: flips a bit of the signatures `C_Sign` returns.
    Corrupt {
        /// Signatures still to corrupt; `None` corrupts every one until the line is removed.
        remaining: Option<u64>,
        /// Only signatures at least this long are corrupted (an RSA CA key's, not a P-256 audit key's).
        min_len: usize,
    },
}

/// Parses a control file; malformed lines are reported (to stderr, by the caller) and skipped, so
/// that a typo never silently turns into "no faults" for the whole file.
fn parse(text: &str, known_functions: &[&str], mechanism_functions: &[&str]) -> (Vec<Rule>, Vec<String>) {
    let mut rules = Vec::new();
    let mut problems = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        let function = |name: &str| {
            if known_functions.contains(&name) {
                Ok(name.to_owned())
            } else {
                Err(format!("unknown PKCS#11 function {name:?}"))
            }
        };
        let rule = match words.as_slice() {
            ["fail", name, rv, rest @ ..] if rest.len() <= 2 => function(name).and_then(|function| {
                let rv = parse_return_value(rv).ok_or_else(|| format!("unknown return value {rv:?}"))?;
                let (mut remaining, mut mechanism) = (None, None);
                // The optional COUNT and `mechanism=` qualifier, in either order, each at most once.
                for word in rest {
                    if let Some(name) = word.strip_prefix("mechanism=") {
                        if mechanism.is_some() {
                            return Err("more than one mechanism= qualifier".to_owned());
                        }
                        if !mechanism_functions.contains(&function.as_str()) {
                            return Err(format!("{function} takes no mechanism"));
                        }
                        mechanism = Some(parse_mechanism(name).ok_or_else(|| format!("unknown mechanism {name:?}"))?);
                    } else {
                        if remaining.is_some() {
                            return Err("more than one count".to_owned());
                        }
                        remaining = Some(word.parse().map_err(|_| format!("bad count {word:?}"))?);
                    }
                }
                Ok(Rule::Fail {
                    function,
                    rv,
                    remaining,
                    mechanism,
                })
            }),
            ["latency", name, millis] => function(name).and_then(|function| {
                let millis: u64 = millis.parse().map_err(|_| format!("bad milliseconds {millis:?}"))?;
                Ok(Rule::Latency {
                    function,
                    delay: Duration::from_millis(millis),
                })
            }),
            ["corrupt", "C_Sign", rest @ ..] if rest.len() <= 2 => {
                let (mut remaining, mut min_len) = (None, None);
                let mut problem = None;
                for word in rest {
                    if let Some(length) = word.strip_prefix("min-length=") {
                        match (min_len, length.parse::<usize>()) {
                            (None, Ok(length)) => min_len = Some(length),
                            (Some(_), _) => problem = Some("more than one min-length= qualifier".to_owned()),
                            (None, Err(_)) => problem = Some(format!("bad length {length:?}")),
                        }
                    } else {
                        match (remaining, word.parse::<u64>()) {
                            (None, Ok(count)) => remaining = Some(count),
                            (Some(_), _) => problem = Some("more than one count".to_owned()),
                            (None, Err(_)) => problem = Some(format!("bad count {word:?}")),
                        }
                    }
                }
                match problem {
                    Some(problem) => Err(problem),
                    None => Ok(Rule::Corrupt {
                        remaining,
                        min_len: min_len.unwrap_or(0),
                    }),
                }
            }
            ["corrupt", name, ..] => Err(format!("only C_Sign can be corrupted, not {name:?}")),
            ["session-limit", limit] => limit
                .parse()
                .map(Rule::SessionLimit)
                .map_err(|_| format!("bad session limit {limit:?}")),
            _ => {
                Err("expected `fail FUNCTION CKR_NAME [COUNT] [mechanism=CKM_NAME]`, `latency FUNCTION MS`, `session-limit N` or `corrupt C_Sign [COUNT] [min-length=N]`".to_owned())
            }
        };
        match rule {
            Ok(rule) => rules.push(rule),
            Err(problem) => problems.push(format!("line {}: {problem}; line ignored", index + 1)),
        }
    }
    (rules, problems)
}

/// The whole fault state of the process.
pub struct Faults {
    control: Option<PathBuf>,
    known_functions: &'static [&'static str],
    /// The functions whose `fail` lines may carry `mechanism=`.
    mechanism_functions: &'static [&'static str],
    state: Mutex<State>,
    log: Option<Mutex<fs::File>>,
}

#[derive(Default)]
struct State {
    /// The control file content the rules were parsed from.
    content: Option<Vec<u8>>,
    rules: Vec<Rule>,
    /// Open sessions and their slots, as seen through this module.
    sessions: HashMap<CK_SESSION_HANDLE, CK_SLOT_ID>,
    /// `C_OpenSession` calls admitted but not yet returned: counted against the limit so that
    /// concurrent opens cannot overshoot it.
    opening: usize,
}

impl Faults {
    fn from_env() -> Faults {
        let log = std::env::var_os(LOG_ENV).and_then(|path| {
            match fs::OpenOptions::new().create(true).append(true).open(&path) {
                Ok(file) => Some(Mutex::new(file)),
                Err(error) => {
                    eprintln!(
                        "pkcs11-fault: cannot open the call log {}: {error}",
                        PathBuf::from(path).display()
                    );
                    None
                }
            }
        });
        Faults {
            control: std::env::var_os(CONTROL_ENV).map(PathBuf::from),
            known_functions: crate::ffi::FUNCTION_NAMES,
            mechanism_functions: crate::ffi::MECHANISM_FUNCTION_NAMES,
            state: Mutex::new(State::default()),
            log,
        }
    }

    /// Locks the state; a panic while holding the lock cannot leave it inconsistent (every update
    /// is a single assignment or map operation), so a poisoned lock is simply taken over.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Re-reads the control file and re-parses it when its content changed.
    fn refresh(&self, state: &mut State) {
        let Some(path) = &self.control else { return };
        let content = fs::read(path).ok();
        if content == state.content {
            return;
        }
        let text = content.as_deref().map(String::from_utf8_lossy).unwrap_or_default();
        let (rules, problems) = parse(&text, self.known_functions, self.mechanism_functions);
        for problem in problems {
            eprintln!("pkcs11-fault: control file {}: {problem}", path.display());
        }
        state.rules = rules;
        state.content = content;
    }

    /// Called before forwarding `function`: sleeps for any latency set on it, then returns the
    /// value to inject instead of forwarding, if a `fail` rule matches.
    pub fn before(&self, function: &str) -> Option<CK_RV> {
        self.before_mechanism(function, None)
    }

    /// [`Faults::before`] for a function that takes a `CK_MECHANISM`: `fail` lines with a
    /// `mechanism=` qualifier match only when `mechanism` (`None`: no mechanism given) is theirs.
    pub fn before_mechanism(&self, function: &str, mechanism: Option<CK_MECHANISM_TYPE>) -> Option<CK_RV> {
        let (delay, injected) = {
            let mut state = self.lock();
            self.refresh(&mut state);
            let delay: Duration = state
                .rules
                .iter()
                .filter_map(|rule| match rule {
                    Rule::Latency { function: name, delay } if name == function => Some(*delay),
                    _ => None,
                })
                .sum();
            let injected = state.rules.iter_mut().find_map(|rule| match rule {
                Rule::Fail {
                    function: name,
                    rv,
                    remaining,
                    mechanism: wanted,
                } if name == function
                    && *remaining != Some(0)
                    && wanted.is_none_or(|wanted| Some(wanted) == mechanism) =>
                {
                    if let Some(remaining) = remaining {
                        *remaining -= 1;
                    }
                    Some(*rv)
                }
                _ => None,
            });
            (delay, injected)
        };
        // Sleep without the lock, so that latency on one call does not serialise the others.
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        if let Some(rv) = injected {
            self.record(function, rv, true);
        }
        injected
    }

    /// Called after a forwarded `C_Sign` returned a signature of `len` bytes: whether to corrupt it
    /// (a `corrupt` line with calls left and a `min-length` it reaches; that line's count goes down).
    pub fn corrupt_signature(&self, len: usize) -> bool {
        let mut state = self.lock();
        self.refresh(&mut state);
        state.rules.iter_mut().any(|rule| match rule {
            Rule::Corrupt { remaining, min_len } if *remaining != Some(0) && len >= *min_len => {
                if let Some(remaining) = remaining {
                    *remaining -= 1;
                }
                true
            }
            _ => false,
        })
    }

    /// Like [`Faults::before`] for `C_OpenSession`, which the session limit applies to as well.
    /// On `None`, the caller must report the outcome with [`Faults::opened`].
    pub fn before_open_session(&self) -> Option<CK_RV> {
        if let Some(rv) = self.before("C_OpenSession") {
            return Some(rv);
        }
        let mut state = self.lock();
        let limit = state.rules.iter().rev().find_map(|rule| match rule {
            Rule::SessionLimit(limit) => Some(*limit),
            _ => None,
        });
        if let Some(limit) = limit
            && state.sessions.len() + state.opening >= limit
        {
            drop(state);
            self.record("C_OpenSession", CKR_SESSION_COUNT, true);
            return Some(CKR_SESSION_COUNT);
        }
        state.opening += 1;
        None
    }

    /// Records the outcome of a forwarded `C_OpenSession` admitted by [`Faults::before_open_session`].
    pub fn opened(&self, slot: CK_SLOT_ID, session: Option<CK_SESSION_HANDLE>) {
        let mut state = self.lock();
        state.opening = state.opening.saturating_sub(1);
        if let Some(session) = session {
            state.sessions.insert(session, slot);
        }
    }

    /// A session was closed.
    pub fn closed(&self, session: CK_SESSION_HANDLE) {
        self.lock().sessions.remove(&session);
    }

    /// Every session on `slot` was closed.
    pub fn closed_all(&self, slot: CK_SLOT_ID) {
        self.lock().sessions.retain(|_, session_slot| *session_slot != slot);
    }

    /// The module was finalised: every session is gone.
    pub fn finalized(&self) {
        self.lock().sessions.clear();
    }

    /// Appends `FUNCTION CKR_NAME[ injected]` to the call log, if there is one.
    pub fn record(&self, function: &str, rv: CK_RV, injected: bool) {
        let Some(log) = &self.log else { return };
        let suffix = if injected { " injected" } else { "" };
        let line = format!("{function} {}{suffix}\n", return_value_name(rv));
        let mut file = log.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        // One write per line on an O_APPEND file: lines from concurrent calls never interleave.
        let _ = file.write_all(line.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KNOWN: &[&str] = &["C_Sign", "C_SignInit", "C_Login", "C_OpenSession"];
    const WITH_MECHANISM: &[&str] = &["C_SignInit"];

    /// Faults read from a control file of this test's own (`name` keeps tests apart) holding `text`;
    /// the caller removes the file.
    fn faults_controlled_by(name: &str, text: &str) -> (PathBuf, Faults) {
        let control = std::env::temp_dir().join(format!("pkcs11-fault-{name}-test-{}", std::process::id()));
        fs::write(&control, text).expect("write the control file");
        let faults = Faults {
            control: Some(control.clone()),
            known_functions: KNOWN,
            mechanism_functions: WITH_MECHANISM,
            state: Mutex::new(State::default()),
            log: None,
        };
        (control, faults)
    }

    #[test]
    fn parses_every_command_and_reports_bad_lines() {
        let text = "# header\n\
                    fail C_Sign CKR_DEVICE_ERROR\n\
                    fail C_Login CKR_PIN_INCORRECT 2   # trailing comment\n\
                    fail C_Sign 0x80000001 1\n\
                    latency C_Sign 200\n\
                    session-limit 1\n\
                    \n\
                    fail C_Nope CKR_OK\n\
                    fail C_Sign CKR_WHATEVER\n\
                    latency C_Sign soon\n\
                    explode\n";
        let (rules, problems) = parse(text, KNOWN, WITH_MECHANISM);
        assert_eq!(
            rules,
            [
                Rule::Fail {
                    function: "C_Sign".to_owned(),
                    rv: CKR_DEVICE_ERROR,
                    remaining: None,
                    mechanism: None
                },
                Rule::Fail {
                    function: "C_Login".to_owned(),
                    rv: CKR_PIN_INCORRECT,
                    remaining: Some(2),
                    mechanism: None
                },
                Rule::Fail {
                    function: "C_Sign".to_owned(),
                    rv: 0x8000_0001,
                    remaining: Some(1),
                    mechanism: None
                },
                Rule::Latency {
                    function: "C_Sign".to_owned(),
                    delay: Duration::from_millis(200)
                },
                Rule::SessionLimit(1),
            ]
        );
        assert_eq!(problems.len(), 4, "{problems:?}");
        assert!(
            problems[0].starts_with("line 8: unknown PKCS#11 function"),
            "{problems:?}"
        );
    }

    #[test]
    fn parses_corrupt_lines_and_counts_only_long_enough_signatures() {
        let text = "corrupt C_Sign\n\
                    corrupt C_Sign 2 min-length=100\n\
                    corrupt C_Sign min-length=8 1\n\
                    corrupt C_Login 1\n\
                    corrupt C_Sign 1 2\n\
                    corrupt C_Sign min-length=x\n";
        let (rules, problems) = parse(text, KNOWN, WITH_MECHANISM);
        assert_eq!(
            rules,
            [
                Rule::Corrupt {
                    remaining: None,
                    min_len: 0
                },
                Rule::Corrupt {
                    remaining: Some(2),
                    min_len: 100
                },
                Rule::Corrupt {
                    remaining: Some(1),
                    min_len: 8
                },
            ]
        );
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[0].contains("only C_Sign"), "{problems:?}");

        let (control, faults) = faults_controlled_by("corrupt", "corrupt C_Sign 2 min-length=100\n");
        // A 64-byte ECDSA signature is left alone; two 256-byte RSA signatures are corrupted, then none.
        assert!(!faults.corrupt_signature(64));
        assert!(faults.corrupt_signature(256));
        assert!(faults.corrupt_signature(256));
        assert!(!faults.corrupt_signature(256));
        let _ = fs::remove_file(control);
    }

    #[test]
    fn parses_mechanism_qualifiers_and_refuses_them_where_no_mechanism_is_passed() {
        let text = "fail C_SignInit CKR_FUNCTION_FAILED mechanism=CKM_ECDSA\n\
                    fail C_SignInit CKR_DEVICE_ERROR 3 mechanism=CKM_SHA256_RSA_PKCS\n\
                    fail C_SignInit CKR_DEVICE_ERROR mechanism=0x1041 2\n\
                    fail C_Sign CKR_FUNCTION_FAILED mechanism=CKM_ECDSA\n\
                    fail C_SignInit CKR_FUNCTION_FAILED mechanism=CKM_NOPE\n\
                    fail C_SignInit CKR_FUNCTION_FAILED mechanism=CKM_ECDSA mechanism=CKM_RSA_PKCS\n\
                    fail C_SignInit CKR_FUNCTION_FAILED 1 2\n\
                    fail C_SignInit CKR_FUNCTION_FAILED 1 mechanism=CKM_ECDSA extra\n";
        let (rules, problems) = parse(text, KNOWN, WITH_MECHANISM);
        let fail = |rv, remaining, mechanism| Rule::Fail {
            function: "C_SignInit".to_owned(),
            rv,
            remaining,
            mechanism,
        };
        assert_eq!(
            rules,
            [
                fail(CKR_FUNCTION_FAILED, None, Some(CKM_ECDSA)),
                fail(CKR_DEVICE_ERROR, Some(3), Some(CKM_SHA256_RSA_PKCS)),
                fail(CKR_DEVICE_ERROR, Some(2), Some(CKM_ECDSA)),
            ]
        );
        let expected = [
            "line 4: C_Sign takes no mechanism",
            "line 5: unknown mechanism \"CKM_NOPE\"",
            "line 6: more than one mechanism= qualifier",
            "line 7: more than one count",
            "line 8: expected",
        ];
        assert_eq!(problems.len(), expected.len(), "{problems:?}");
        for (problem, expected) in problems.iter().zip(expected) {
            assert!(
                problem.starts_with(expected),
                "{problem:?} should start with {expected:?}"
            );
        }
    }

    #[test]
    fn mechanism_names_round_trip() {
        for (name, value) in MECHANISMS {
            assert_eq!(parse_mechanism(name), Some(*value), "{name}");
        }
        assert_eq!(parse_mechanism("0x1041"), Some(CKM_ECDSA));
        assert_eq!(parse_mechanism("0xzz"), None);
        assert_eq!(parse_mechanism("CKM_ecdsa"), None);
    }

    #[test]
    fn a_mechanism_rule_matches_only_its_mechanism_and_an_unqualified_rule_matches_all() {
        let (temp, faults) = faults_controlled_by(
            "mechanism",
            "fail C_SignInit CKR_FUNCTION_FAILED 1 mechanism=CKM_ECDSA\nfail C_SignInit CKR_DEVICE_ERROR mechanism=CKM_SHA256_RSA_PKCS\n",
        );
        assert_eq!(
            faults.before_mechanism("C_SignInit", Some(CKM_RSA_PKCS)),
            None,
            "another mechanism"
        );
        assert_eq!(faults.before_mechanism("C_SignInit", None), None, "no mechanism given");
        assert_eq!(faults.before("C_SignInit"), None);
        assert_eq!(
            faults.before_mechanism("C_SignInit", Some(CKM_ECDSA)),
            Some(CKR_FUNCTION_FAILED)
        );
        assert_eq!(
            faults.before_mechanism("C_SignInit", Some(CKM_ECDSA)),
            None,
            "one-off consumed"
        );
        assert_eq!(
            faults.before_mechanism("C_SignInit", Some(CKM_SHA256_RSA_PKCS)),
            Some(CKR_DEVICE_ERROR)
        );
        // Without a qualifier, every mechanism matches, and so does a call without one.
        fs::write(&temp, "fail C_SignInit CKR_FUNCTION_FAILED\n").expect("write");
        for mechanism in [Some(CKM_ECDSA), Some(CKM_SHA256_RSA_PKCS), None] {
            assert_eq!(
                faults.before_mechanism("C_SignInit", mechanism),
                Some(CKR_FUNCTION_FAILED),
                "{mechanism:?}"
            );
        }
        fs::remove_file(&temp).expect("remove");
        assert_eq!(faults.before_mechanism("C_SignInit", Some(CKM_ECDSA)), None);
    }

    #[test]
    fn return_value_names_round_trip() {
        for (name, value) in RETURN_VALUES {
            assert_eq!(parse_return_value(name), Some(*value));
            assert_eq!(return_value_name(*value), *name);
        }
        assert_eq!(return_value_name(0x8000_0001), "0x80000001");
    }

    #[test]
    fn one_off_faults_are_consumed_and_the_session_limit_counts_open_sessions() {
        let (temp, faults) =
            faults_controlled_by("one-off", "fail C_Sign CKR_SESSION_HANDLE_INVALID 1\nsession-limit 1\n");
        assert_eq!(faults.before("C_Sign"), Some(CKR_SESSION_HANDLE_INVALID));
        assert_eq!(faults.before("C_Sign"), None);
        assert_eq!(faults.before_open_session(), None);
        assert_eq!(
            faults.before_open_session(),
            Some(CKR_SESSION_COUNT),
            "one open in flight"
        );
        faults.opened(7, Some(1));
        assert_eq!(faults.before_open_session(), Some(CKR_SESSION_COUNT), "one open");
        faults.closed(1);
        assert_eq!(faults.before_open_session(), None);
        faults.opened(7, None);
        // New content: the one-off counter starts afresh.
        fs::write(&temp, "fail C_Sign CKR_SESSION_HANDLE_INVALID 1\n").expect("write");
        assert_eq!(faults.before("C_Sign"), Some(CKR_SESSION_HANDLE_INVALID));
        fs::remove_file(&temp).expect("remove");
        assert_eq!(faults.before("C_Sign"), None);
    }
}
