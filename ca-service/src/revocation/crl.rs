//! The CRL: a CRL v2 over every revoked certificate, signed by the CA key on the HSM.
