//! Who may call what over mTLS, through the real binary (filled in by the next commit).
