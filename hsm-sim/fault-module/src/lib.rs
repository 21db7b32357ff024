//! pkcs11-fault: a PKCS#11 module that forwards every call to a real module and injects faults and latency on command.
//!
//! Load `libpkcs11_fault.so` where the real module would go. It forwards to the module named by
//! `PKCS11_FAULT_TARGET` (default: SoftHSM2) and reads its faults from the control file named by
//! `PKCS11_FAULT_CONTROL`; see README.md for the syntax and `hsm_sim::faults` for the test side.
//! `ffi` holds the C ABI and every `unsafe` block; `control` is the safe fault plan.

#![deny(unsafe_op_in_unsafe_fn)]

mod control;
mod ffi;
