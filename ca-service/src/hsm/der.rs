//! The few DER encodings the HSM layer needs: SubjectPublicKeyInfo from PKCS#11 attributes, and ECDSA
//! signatures converted from PKCS#11's raw `r‖s` to X.509's `SEQUENCE { r INTEGER, s INTEGER }`.

/// DER of the `ecPublicKey` algorithm OID (1.2.840.10045.2.1).
const OID_EC_PUBLIC_KEY: &[u8] = &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
/// DER of `rsaEncryption` (1.2.840.113549.1.1.1) followed by the NULL parameter.
const OID_RSA_ENCRYPTION_NULL: &[u8] = &[
    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
];
/// DER of the prime256v1 curve OID (1.2.840.10045.3.1.7), as `CKA_EC_PARAMS` holds it.
pub const OID_P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// DER of the secp384r1 curve OID (1.3.132.0.34).
pub const OID_P384: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];

/// Appends a DER tag-length-value.
pub fn push_tlv(out: &mut Vec<u8>, tag: u8, value: &[u8]) {
    out.push(tag);
    let length = value.len();
    if length < 0x80 {
        out.push(length as u8);
    } else {
        let bytes = length.to_be_bytes();
        let skip = bytes.iter().take_while(|byte| **byte == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(value);
}

fn tlv(tag: u8, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len() + 6);
    push_tlv(&mut out, tag, value);
    out
}

/// A DER INTEGER holding the unsigned big-endian `magnitude` (leading zeros stripped, 0x00 added
/// when the top bit is set so that it stays positive).
fn unsigned_integer(magnitude: &[u8]) -> Vec<u8> {
    let start = magnitude.iter().position(|byte| *byte != 0).unwrap_or(magnitude.len());
    let trimmed = &magnitude[start..];
    let mut value = Vec::with_capacity(trimmed.len() + 1);
    if trimmed.first().is_none_or(|byte| byte & 0x80 != 0) {
        value.push(0);
    }
    value.extend_from_slice(trimmed);
    tlv(0x02, &value)
}

/// Converts a raw PKCS#11 ECDSA signature (`r‖s`, each half the curve size) to DER.
pub fn ecdsa_raw_to_der(raw: &[u8]) -> Option<Vec<u8>> {
    if raw.is_empty() || raw.len() % 2 != 0 {
        return None;
    }
    let (r, s) = raw.split_at(raw.len() / 2);
    let mut body = unsigned_integer(r);
    body.extend_from_slice(&unsigned_integer(s));
    Some(tlv(0x30, &body))
}

/// Strips the DER OCTET STRING that SoftHSM (and the PKCS#11 spec) wrap around `CKA_EC_POINT`,
/// returning the SEC1 uncompressed point. A bare point (some vendors) is returned as is.
pub fn unwrap_ec_point(attribute: &[u8]) -> Option<Vec<u8>> {
    if attribute.first() == Some(&0x04) && matches!(attribute.len(), 65 | 97) {
        // Already a bare uncompressed P-256 or P-384 point: 0x04 ‖ X ‖ Y (the wrapped forms are 67 and 100 bytes).
        return Some(attribute.to_vec());
    }
    if attribute.first() != Some(&0x04) {
        return None;
    }
    let (length, header) = match *attribute.get(1)? {
        length if length < 0x80 => (length as usize, 2),
        0x81 => (*attribute.get(2)? as usize, 3),
        _ => return None,
    };
    let point = attribute.get(header..)?;
    (point.len() == length && point.first() == Some(&0x04)).then(|| point.to_vec())
}

/// The `subjectPublicKey` bytes of an RSA key: PKCS#1 `RSAPublicKey { modulus, publicExponent }`.
pub fn rsa_public_key(modulus: &[u8], exponent: &[u8]) -> Vec<u8> {
    let mut body = unsigned_integer(modulus);
    body.extend_from_slice(&unsigned_integer(exponent));
    tlv(0x30, &body)
}

/// A SubjectPublicKeyInfo for an EC point on the curve named by `curve_oid`.
pub fn ec_spki(curve_oid: &[u8], point: &[u8]) -> Vec<u8> {
    let mut algorithm = OID_EC_PUBLIC_KEY.to_vec();
    algorithm.extend_from_slice(curve_oid);
    spki(&tlv(0x30, &algorithm), point)
}

/// A SubjectPublicKeyInfo for a PKCS#1 `RSAPublicKey`.
pub fn rsa_spki(rsa_public_key: &[u8]) -> Vec<u8> {
    spki(&tlv(0x30, OID_RSA_ENCRYPTION_NULL), rsa_public_key)
}

fn spki(algorithm_identifier: &[u8], subject_public_key: &[u8]) -> Vec<u8> {
    let mut bit_string = Vec::with_capacity(subject_public_key.len() + 1);
    bit_string.push(0); // no unused bits
    bit_string.extend_from_slice(subject_public_key);
    let mut body = algorithm_identifier.to_vec();
    push_tlv(&mut body, 0x03, &bit_string);
    tlv(0x30, &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ecdsa_signature_halves_become_positive_minimal_integers() {
        let mut raw = vec![0u8; 64];
        raw[0] = 0x80; // r has its top bit set: needs a 0x00 prefix
        raw[32] = 0x00; // s starts with zeros: they are stripped
        raw[33] = 0x01;
        let der = ecdsa_raw_to_der(&raw).expect("even length");
        assert_eq!(&der[..4], &[0x30, 33 + 2 + 31 + 2, 0x02, 33]);
        assert_eq!(der[4], 0x00);
        assert_eq!(der[5], 0x80);
        let s_offset = 2 + 2 + 33;
        assert_eq!(&der[s_offset..s_offset + 3], &[0x02, 31, 0x01]);
    }

    #[test]
    fn ecdsa_signature_of_odd_length_is_rejected() {
        assert!(ecdsa_raw_to_der(&[1, 2, 3]).is_none());
        assert!(ecdsa_raw_to_der(&[]).is_none());
    }

    #[test]
    fn ec_point_is_unwrapped_from_octet_string() {
        let mut point = vec![0x04];
        point.extend_from_slice(&[7u8; 64]);
        let mut wrapped = vec![0x04, 65];
        wrapped.extend_from_slice(&point);
        assert_eq!(unwrap_ec_point(&wrapped), Some(point.clone()));
        assert_eq!(unwrap_ec_point(&point), Some(point));
        let mut p384 = vec![0x04, 0x81, 97, 0x04];
        p384.extend_from_slice(&[9u8; 96]);
        assert_eq!(unwrap_ec_point(&p384).map(|point| point.len()), Some(97));
        assert_eq!(unwrap_ec_point(&[0x04, 5, 1]), None);
    }

    #[test]
    fn long_lengths_use_the_minimal_long_form() {
        let mut out = Vec::new();
        push_tlv(&mut out, 0x04, &[0u8; 300]);
        assert_eq!(&out[..4], &[0x04, 0x82, 0x01, 0x2c]);
    }
}
