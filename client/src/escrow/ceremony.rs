//! The steps of `e2ee-recovery`: the recovery-key ceremony and opening an escrowed key, with their config files.
