//! The C ABI of the module: `C_GetFunctionList`, the forwarding function list and the loaded target module.
//!
//! Every `unsafe` of the crate lives here. Each entry point consults `control::FAULTS` first (with
//! the mechanism type, for the functions taking a `CK_MECHANISM`), then passes its arguments,
//! untouched, to the same entry of the target module's function list.

use std::ffi::c_void;
use std::path::{Path, PathBuf};
use std::ptr;
use std::sync::OnceLock;

use cryptoki_sys::*;
use hsm_sim::faults::TARGET_ENV;

use crate::control::FAULTS;

/// The real module: its function list, and the library kept loaded for as long as this process runs.
struct Target {
    functions: CK_FUNCTION_LIST,
    _library: libloading::Library,
}

/// Loaded once, at the first `C_GetFunctionList`; never unloaded, because the copied function list
/// points into it.
static TARGET: OnceLock<Result<Target, String>> = OnceLock::new();

/// The target's function list, or `CKR_GENERAL_ERROR` when it could not be loaded (reported once, on stderr).
fn target() -> Result<&'static CK_FUNCTION_LIST, CK_RV> {
    match TARGET.get_or_init(load_target) {
        Ok(target) => Ok(&target.functions),
        Err(_) => Err(CKR_GENERAL_ERROR),
    }
}

fn load_target() -> Result<Target, String> {
    let path = match std::env::var_os(TARGET_ENV) {
        Some(path) => PathBuf::from(path),
        None => hsm_sim::find_module().map_err(|error| error.to_string())?,
    };
    let result = load_library(&path);
    if let Err(error) = &result {
        eprintln!(
            "pkcs11-fault: cannot load the target module {} ({TARGET_ENV}): {error}",
            path.display()
        );
    }
    result
}

fn load_library(path: &Path) -> Result<Target, String> {
    // SAFETY: loading a PKCS#11 module runs its ELF initialisers; PKCS#11 modules are built to be
    // dlopen()ed by applications exactly like this, and the path is the test's choice of module.
    let library = unsafe { libloading::Library::new(path) }.map_err(|error| error.to_string())?;
    // SAFETY: every PKCS#11 module exports C_GetFunctionList with this signature (PKCS#11 2.40, 5.2).
    let get_function_list =
        unsafe { library.get::<unsafe extern "C" fn(*mut *mut CK_FUNCTION_LIST) -> CK_RV>(b"C_GetFunctionList\0") }
            .map_err(|error| error.to_string())?;
    let mut list: *mut CK_FUNCTION_LIST = ptr::null_mut();
    // SAFETY: `list` is a valid place for the one pointer the function writes.
    let rv = unsafe { get_function_list(&mut list) };
    if rv != CKR_OK || list.is_null() {
        return Err(format!("C_GetFunctionList returned {rv:#x}"));
    }
    // SAFETY: on CKR_OK the module wrote a non-null pointer to its function list, which stays valid
    // while the library is loaded; we copy it and keep the library loaded for good (in `TARGET`).
    let functions = unsafe { *list };
    Ok(Target {
        functions,
        _library: library,
    })
}

/// Calls `$function` of the target with `$args`, or says why it cannot.
macro_rules! forward {
    ($function:ident($($arg:expr),*)) => {
        match target().map(|functions| functions.$function) {
            Err(rv) => rv,
            Ok(None) => CKR_FUNCTION_NOT_SUPPORTED,
            // SAFETY: the arguments are passed through unchanged to the same function of the target
            // module, so the caller's PKCS#11 contract for them carries over as is.
            Ok(Some(real)) => unsafe { real($($arg),*) },
        }
    };
}

/// The mechanism type a caller passed, or `None` for a null pointer.
///
/// # Safety
///
/// `mechanism` is null or points to a `CK_MECHANISM` the caller owns for the duration of the call,
/// as every PKCS#11 function taking a `CK_MECHANISM_PTR` requires of its caller.
unsafe fn mechanism_type(mechanism: *const CK_MECHANISM) -> Option<CK_MECHANISM_TYPE> {
    // SAFETY: per this function's contract, a non-null `mechanism` points to a live CK_MECHANISM;
    // only its `mechanism` field is read (never `pParameter`), and nothing is written.
    unsafe { mechanism.as_ref() }.map(|mechanism| mechanism.mechanism)
}

/// Defines a forwarding entry point per `plain` and `mechanism` function, `FUNCTION_NAMES`,
/// `MECHANISM_FUNCTION_NAMES`, and the function list handed out by `C_GetFunctionList`: the
/// generated forwarders plus the hand-written `custom` entries.
///
/// A `mechanism` function takes its `CK_MECHANISM_PTR` as its second argument; the mechanism
/// type is read (null-checked) so that `fail ... mechanism=CKM_NAME` lines can match on it.
macro_rules! function_list {
    (
        plain { $( $name:ident ( $($arg:ident : $ty:ty),* ); )* }
        mechanism { $(
            $mechanism_name:ident ( $session:ident : $session_ty:ty, $mechanism:ident : *mut CK_MECHANISM $(, $mechanism_arg:ident : $mechanism_ty:ty)* );
        )* }
        custom { $($custom:ident),* }
    ) => {
        $(
            #[allow(non_snake_case, reason = "PKCS#11 names its entry points C_*")]
            unsafe extern "C" fn $name($($arg: $ty),*) -> CK_RV {
                let function = stringify!($name);
                if let Some(rv) = FAULTS.before(function) {
                    return rv;
                }
                let rv = forward!($name($($arg),*));
                FAULTS.record(function, rv, false);
                rv
            }
        )*

        $(
            #[allow(non_snake_case, reason = "PKCS#11 names its entry points C_*")]
            unsafe extern "C" fn $mechanism_name(
                $session: $session_ty,
                $mechanism: *mut CK_MECHANISM
                $(, $mechanism_arg: $mechanism_ty)*
            ) -> CK_RV {
                let function = stringify!($mechanism_name);
                // SAFETY: `$mechanism` is the caller's CK_MECHANISM_PTR argument, null or valid for
                // this call under the caller's PKCS#11 contract, which is mechanism_type's contract.
                let called_with = unsafe { mechanism_type($mechanism) };
                if let Some(rv) = FAULTS.before_mechanism(function, called_with) {
                    return rv;
                }
                let rv = forward!($mechanism_name($session, $mechanism $(, $mechanism_arg)*));
                FAULTS.record(function, rv, false);
                rv
            }
        )*

        /// Every function name the control file may name.
        pub(crate) const FUNCTION_NAMES: &[&str] =
            &[$(stringify!($name),)* $(stringify!($mechanism_name),)* $(stringify!($custom),)*];

        /// The functions taking a `CK_MECHANISM`, whose `fail` lines may carry `mechanism=`.
        pub(crate) const MECHANISM_FUNCTION_NAMES: &[&str] = &[$(stringify!($mechanism_name),)*];

        static FUNCTION_LIST: CK_FUNCTION_LIST = CK_FUNCTION_LIST {
            version: CK_VERSION { major: 2, minor: 40 },
            $( $name: Some($name), )*
            $( $mechanism_name: Some($mechanism_name), )*
            $( $custom: Some($custom), )*
        };
    };
}

function_list! {
    plain {
        C_GetInfo(arg1: *mut CK_INFO);
        C_GetSlotList(arg1: CK_BBOOL, arg2: *mut CK_SLOT_ID, arg3: *mut CK_ULONG);
        C_GetSlotInfo(arg1: CK_SLOT_ID, arg2: *mut CK_SLOT_INFO);
        C_GetTokenInfo(arg1: CK_SLOT_ID, arg2: *mut CK_TOKEN_INFO);
        C_GetMechanismList(arg1: CK_SLOT_ID, arg2: *mut CK_MECHANISM_TYPE, arg3: *mut CK_ULONG);
        C_GetMechanismInfo(arg1: CK_SLOT_ID, arg2: CK_MECHANISM_TYPE, arg3: *mut CK_MECHANISM_INFO);
        C_InitToken(arg1: CK_SLOT_ID, arg2: *mut CK_UTF8CHAR, arg3: CK_ULONG, arg4: *mut CK_UTF8CHAR);
        C_InitPIN(arg1: CK_SESSION_HANDLE, arg2: *mut CK_UTF8CHAR, arg3: CK_ULONG);
        C_SetPIN(arg1: CK_SESSION_HANDLE, arg2: *mut CK_UTF8CHAR, arg3: CK_ULONG, arg4: *mut CK_UTF8CHAR, arg5: CK_ULONG);
        C_GetSessionInfo(arg1: CK_SESSION_HANDLE, arg2: *mut CK_SESSION_INFO);
        C_GetOperationState(arg1: CK_SESSION_HANDLE, arg2: *mut CK_BYTE, arg3: *mut CK_ULONG);
        C_SetOperationState(arg1: CK_SESSION_HANDLE, arg2: *mut CK_BYTE, arg3: CK_ULONG, arg4: CK_OBJECT_HANDLE, arg5: CK_OBJECT_HANDLE);
        C_Login(arg1: CK_SESSION_HANDLE, arg2: CK_USER_TYPE, arg3: *mut CK_UTF8CHAR, arg4: CK_ULONG);
        C_Logout(arg1: CK_SESSION_HANDLE);
        C_CreateObject(arg1: CK_SESSION_HANDLE, arg2: *mut CK_ATTRIBUTE, arg3: CK_ULONG, arg4: *mut CK_OBJECT_HANDLE);
        C_CopyObject(arg1: CK_SESSION_HANDLE, arg2: CK_OBJECT_HANDLE, arg3: *mut CK_ATTRIBUTE, arg4: CK_ULONG, arg5: *mut CK_OBJECT_HANDLE);
        C_DestroyObject(arg1: CK_SESSION_HANDLE, arg2: CK_OBJECT_HANDLE);
        C_GetObjectSize(arg1: CK_SESSION_HANDLE, arg2: CK_OBJECT_HANDLE, arg3: *mut CK_ULONG);
        C_GetAttributeValue(arg1: CK_SESSION_HANDLE, arg2: CK_OBJECT_HANDLE, arg3: *mut CK_ATTRIBUTE, arg4: CK_ULONG);
        C_SetAttributeValue(arg1: CK_SESSION_HANDLE, arg2: CK_OBJECT_HANDLE, arg3: *mut CK_ATTRIBUTE, arg4: CK_ULONG);
        C_FindObjectsInit(arg1: CK_SESSION_HANDLE, arg2: *mut CK_ATTRIBUTE, arg3: CK_ULONG);
        C_FindObjects(arg1: CK_SESSION_HANDLE, arg2: *mut CK_OBJECT_HANDLE, arg3: CK_ULONG, arg4: *mut CK_ULONG);
        C_FindObjectsFinal(arg1: CK_SESSION_HANDLE);
        C_Encrypt(arg1: CK_SESSION_HANDLE, arg2: *mut CK_BYTE, arg3: CK_ULONG, arg4: *mut CK_BYTE, arg5: *mut CK_ULONG);
        C_EncryptUpdate(arg1: CK_SESSION_HANDLE, arg2: *mut CK_BYTE, arg3: CK_ULONG, arg4: *mut CK_BYTE, arg5: *mut CK_ULONG);
        C_EncryptFinal(arg1: CK_SESSION_HANDLE, arg2: *mut CK_BYTE, arg3: *mut CK_ULONG);
        C_Decrypt(arg1: CK_SESSION_HANDLE, arg2: *mut CK_BYTE, arg3: CK_ULONG, arg4: *mut CK_BYTE, arg5: *mut CK_ULONG);
        C_DecryptUpdate(arg1: CK_SESSION_HANDLE, arg2: *mut CK_BYTE, arg3: CK_ULONG, arg4: *mut CK_BYTE, arg5: *mut CK_ULONG);
        C_DecryptFinal(arg1: CK_SESSION_HANDLE, arg2: *mut CK_BYTE, arg3: *mut CK_ULONG);
        C_Digest(arg1: CK_SESSION_HANDLE, arg2: *mut CK_BYTE, arg3: CK_ULONG, arg4: *mut CK_BYTE, arg5: *mut CK_ULONG);
        C_DigestUpdate(arg1: CK_SESSION_HANDLE, arg2: *mut CK_BYTE, arg3: CK_ULONG);
        C_DigestKey(arg1: CK_SESSION_HANDLE, arg2: CK_OBJECT_HANDLE);
        C_DigestFinal(arg1: CK_SESSION_HANDLE, arg2: *mut CK_BYTE, arg3: *mut CK_ULONG);
        C_SignUpdate(arg1: CK_SESSION_HANDLE, arg2: *mut CK_BYTE, arg3: CK_ULONG);
        C_SignFinal(arg1: CK_SESSION_HANDLE, arg2: *mut CK_BYTE, arg3: *mut CK_ULONG);
        C_SignRecover(arg1: CK_SESSION_HANDLE, arg2: *mut CK_BYTE, arg3: CK_ULONG, arg4: *mut CK_BYTE, arg5: *mut CK_ULONG);
        C_Verify(arg1: CK_SESSION_HANDLE, arg2: *mut CK_BYTE, arg3: CK_ULONG, arg4: *mut CK_BYTE, arg5: CK_ULONG);
        C_VerifyUpdate(arg1: CK_SESSION_HANDLE, arg2: *mut CK_BYTE, arg3: CK_ULONG);
        C_VerifyFinal(arg1: CK_SESSION_HANDLE, arg2: *mut CK_BYTE, arg3: CK_ULONG);
        C_VerifyRecover(arg1: CK_SESSION_HANDLE, arg2: *mut CK_BYTE, arg3: CK_ULONG, arg4: *mut CK_BYTE, arg5: *mut CK_ULONG);
        C_DigestEncryptUpdate(arg1: CK_SESSION_HANDLE, arg2: *mut CK_BYTE, arg3: CK_ULONG, arg4: *mut CK_BYTE, arg5: *mut CK_ULONG);
        C_DecryptDigestUpdate(arg1: CK_SESSION_HANDLE, arg2: *mut CK_BYTE, arg3: CK_ULONG, arg4: *mut CK_BYTE, arg5: *mut CK_ULONG);
        C_SignEncryptUpdate(arg1: CK_SESSION_HANDLE, arg2: *mut CK_BYTE, arg3: CK_ULONG, arg4: *mut CK_BYTE, arg5: *mut CK_ULONG);
        C_DecryptVerifyUpdate(arg1: CK_SESSION_HANDLE, arg2: *mut CK_BYTE, arg3: CK_ULONG, arg4: *mut CK_BYTE, arg5: *mut CK_ULONG);
        C_SeedRandom(arg1: CK_SESSION_HANDLE, arg2: *mut CK_BYTE, arg3: CK_ULONG);
        C_GenerateRandom(arg1: CK_SESSION_HANDLE, arg2: *mut CK_BYTE, arg3: CK_ULONG);
        C_GetFunctionStatus(arg1: CK_SESSION_HANDLE);
        C_CancelFunction(arg1: CK_SESSION_HANDLE);
        C_WaitForSlotEvent(arg1: CK_FLAGS, arg2: *mut CK_SLOT_ID, arg3: *mut c_void);
    }
    mechanism {
        C_EncryptInit(arg1: CK_SESSION_HANDLE, mechanism: *mut CK_MECHANISM, arg3: CK_OBJECT_HANDLE);
        C_DecryptInit(arg1: CK_SESSION_HANDLE, mechanism: *mut CK_MECHANISM, arg3: CK_OBJECT_HANDLE);
        C_DigestInit(arg1: CK_SESSION_HANDLE, mechanism: *mut CK_MECHANISM);
        C_SignInit(arg1: CK_SESSION_HANDLE, mechanism: *mut CK_MECHANISM, arg3: CK_OBJECT_HANDLE);
        C_SignRecoverInit(arg1: CK_SESSION_HANDLE, mechanism: *mut CK_MECHANISM, arg3: CK_OBJECT_HANDLE);
        C_VerifyInit(arg1: CK_SESSION_HANDLE, mechanism: *mut CK_MECHANISM, arg3: CK_OBJECT_HANDLE);
        C_VerifyRecoverInit(arg1: CK_SESSION_HANDLE, mechanism: *mut CK_MECHANISM, arg3: CK_OBJECT_HANDLE);
        C_GenerateKey(arg1: CK_SESSION_HANDLE, mechanism: *mut CK_MECHANISM, arg3: *mut CK_ATTRIBUTE, arg4: CK_ULONG, arg5: *mut CK_OBJECT_HANDLE);
        C_GenerateKeyPair(arg1: CK_SESSION_HANDLE, mechanism: *mut CK_MECHANISM, arg3: *mut CK_ATTRIBUTE, arg4: CK_ULONG, arg5: *mut CK_ATTRIBUTE, arg6: CK_ULONG, arg7: *mut CK_OBJECT_HANDLE, arg8: *mut CK_OBJECT_HANDLE);
        C_WrapKey(arg1: CK_SESSION_HANDLE, mechanism: *mut CK_MECHANISM, arg3: CK_OBJECT_HANDLE, arg4: CK_OBJECT_HANDLE, arg5: *mut CK_BYTE, arg6: *mut CK_ULONG);
        C_UnwrapKey(arg1: CK_SESSION_HANDLE, mechanism: *mut CK_MECHANISM, arg3: CK_OBJECT_HANDLE, arg4: *mut CK_BYTE, arg5: CK_ULONG, arg6: *mut CK_ATTRIBUTE, arg7: CK_ULONG, arg8: *mut CK_OBJECT_HANDLE);
        C_DeriveKey(arg1: CK_SESSION_HANDLE, mechanism: *mut CK_MECHANISM, arg3: CK_OBJECT_HANDLE, arg4: *mut CK_ATTRIBUTE, arg5: CK_ULONG, arg6: *mut CK_OBJECT_HANDLE);
    }
    custom {
        C_Initialize, C_Finalize, C_GetFunctionList, C_OpenSession, C_CloseSession, C_CloseAllSessions, C_Sign
    }
}

/// The module's only exported symbol: hands out the forwarding function list.
///
/// Loads the target module first, so that a wrong `PKCS11_FAULT_TARGET` fails here, at load time.
// SAFETY (of `no_mangle`): the only symbol this library exports; cryptoki dlopen()s modules with
// RTLD_LOCAL, so it cannot clash with the target module's own C_GetFunctionList.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_GetFunctionList(list: *mut *mut CK_FUNCTION_LIST) -> CK_RV {
    if list.is_null() {
        return CKR_ARGUMENTS_BAD;
    }
    if let Err(rv) = target() {
        return rv;
    }
    // SAFETY: `list` is non-null and, per PKCS#11, points to writable storage for one pointer. The
    // list is a static that callers only read, as the standard requires.
    unsafe { *list = ptr::addr_of!(FUNCTION_LIST).cast_mut() };
    CKR_OK
}

#[allow(non_snake_case, reason = "PKCS#11 names its entry points C_*")]
unsafe extern "C" fn C_Initialize(init_args: *mut c_void) -> CK_RV {
    if let Some(rv) = FAULTS.before("C_Initialize") {
        return rv;
    }
    let rv = forward!(C_Initialize(init_args));
    FAULTS.record("C_Initialize", rv, false);
    rv
}

#[allow(non_snake_case, reason = "PKCS#11 names its entry points C_*")]
unsafe extern "C" fn C_Finalize(reserved: *mut c_void) -> CK_RV {
    if let Some(rv) = FAULTS.before("C_Finalize") {
        return rv;
    }
    let rv = forward!(C_Finalize(reserved));
    if rv == CKR_OK {
        FAULTS.finalized();
    }
    FAULTS.record("C_Finalize", rv, false);
    rv
}

/// Forwards, counting sessions for `session-limit`.
#[allow(non_snake_case, reason = "PKCS#11 names its entry points C_*")]
unsafe extern "C" fn C_OpenSession(
    slot: CK_SLOT_ID,
    flags: CK_FLAGS,
    application: *mut c_void,
    notify: CK_NOTIFY,
    session: *mut CK_SESSION_HANDLE,
) -> CK_RV {
    if let Some(rv) = FAULTS.before_open_session() {
        return rv;
    }
    let rv = forward!(C_OpenSession(slot, flags, application, notify, session));
    let opened = if rv == CKR_OK && !session.is_null() {
        // SAFETY: on CKR_OK the target wrote the new handle through `session`, which is non-null
        // and points to the caller's storage for it.
        Some(unsafe { *session })
    } else {
        None
    };
    FAULTS.opened(slot, opened);
    FAULTS.record("C_OpenSession", rv, false);
    rv
}

#[allow(non_snake_case, reason = "PKCS#11 names its entry points C_*")]
unsafe extern "C" fn C_CloseSession(session: CK_SESSION_HANDLE) -> CK_RV {
    if let Some(rv) = FAULTS.before("C_CloseSession") {
        return rv;
    }
    let rv = forward!(C_CloseSession(session));
    if rv == CKR_OK || rv == CKR_SESSION_HANDLE_INVALID || rv == CKR_SESSION_CLOSED {
        FAULTS.closed(session);
    }
    FAULTS.record("C_CloseSession", rv, false);
    rv
}

#[allow(non_snake_case, reason = "PKCS#11 names its entry points C_*")]
unsafe extern "C" fn C_CloseAllSessions(slot: CK_SLOT_ID) -> CK_RV {
    if let Some(rv) = FAULTS.before("C_CloseAllSessions") {
        return rv;
    }
    let rv = forward!(C_CloseAllSessions(slot));
    if rv == CKR_OK {
        FAULTS.closed_all(slot);
    }
    FAULTS.record("C_CloseAllSessions", rv, false);
    rv
}

/// Forwards; an injected failure also ends the signing operation on the target, as a failed
/// `C_Sign` does on a real token (PKCS#11 2.40, 5.11), so a retry on the same session does not
/// meet `CKR_OPERATION_ACTIVE`.
#[allow(non_snake_case, reason = "PKCS#11 names its entry points C_*")]
unsafe extern "C" fn C_Sign(
    session: CK_SESSION_HANDLE,
    data: *mut CK_BYTE,
    data_len: CK_ULONG,
    signature: *mut CK_BYTE,
    signature_len: *mut CK_ULONG,
) -> CK_RV {
    if let Some(rv) = FAULTS.before("C_Sign") {
        if let Ok(Some(real)) = target().map(|functions| functions.C_Sign) {
            // Query the length, then sign into a scratch buffer: this completes (ends) the operation.
            let mut length: CK_ULONG = 0;
            // SAFETY: the caller's session and data, as the caller passed them; a null output
            // buffer asks for the length only, written into our local.
            let query = unsafe { real(session, data, data_len, ptr::null_mut(), &mut length) };
            if query == CKR_OK {
                let mut scratch = vec![0u8; length as usize];
                // SAFETY: as above, with an output buffer of exactly the length the target asked for.
                let _ = unsafe { real(session, data, data_len, scratch.as_mut_ptr(), &mut length) };
            }
        }
        return rv;
    }
    let rv = forward!(C_Sign(session, data, data_len, signature, signature_len));
    if rv == CKR_OK && !signature.is_null() && !signature_len.is_null() {
        // SAFETY: the target returned CKR_OK with an output buffer, so it wrote the signature's length
        // through `signature_len` and that many bytes into `signature`, the caller's buffer.
        let len = unsafe { *signature_len } as usize;
        if len > 0 && FAULTS.corrupt_signature(len) {
            // SAFETY: `len - 1` is inside the `len` bytes just written (see above).
            unsafe { *signature.add(len - 1) ^= 0x01 };
        }
    }
    FAULTS.record("C_Sign", rv, false);
    rv
}
