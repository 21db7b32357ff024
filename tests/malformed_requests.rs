//! Requests no honest client sends, over real gRPC to `serve --dev --plaintext`: keys in a non-canonical encoding, PEM with text around it or a second block, and messages that are not protobuf; each is INVALID_ARGUMENT, and each refused CSR has its audit entry.

#![allow(clippy::expect_used, reason = "test code: a failed expectation is a test failure")]

mod common;

use common::{DevServer, UserKey, UserKeyPair, issue};
use e2ee_ca_proto::codec::ProtoCodec;
use e2ee_ca_proto::v1::{GetCaInfoResponse, GetCrlResponse, GetInclusionProofRequest};
use tonic::Code;
use tonic::transport::Channel;

/// DER: `tag`, the definite length of `content` in the shortest form, `content`.
fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let length = content.len().to_be_bytes();
    let significant: Vec<u8> = length.iter().copied().skip_while(|byte| *byte == 0).collect();
    let mut out = vec![tag];
    match content.len() {
        0..=127 => out.extend(&significant),
        _ => {
            out.push(0x80 | significant.len() as u8);
            out.extend(&significant);
        }
    }
    out.extend_from_slice(content);
    out
}

/// BER that DER forbids: `tag`, the length of `content` in the long form with a leading zero byte.
fn ber_long_length(tag: u8, content: &[u8]) -> Vec<u8> {
    let length = u32::try_from(content.len()).expect("small").to_be_bytes();
    let mut out = vec![tag, 0x85, 0x00];
    out.extend(length);
    out.extend_from_slice(content);
    out
}

/// Splits one TLV (short or long-form length) off `input`: (tag, content, rest).
fn tlv(input: &[u8]) -> (u8, &[u8], &[u8]) {
    let (tag, first) = (input[0], input[1]);
    let (length, header) = if first < 0x80 {
        (usize::from(first), 2)
    } else {
        let count = usize::from(first & 0x7f);
        let length = input[2..2 + count]
            .iter()
            .fold(0usize, |length, byte| (length << 8) | usize::from(*byte));
        (length, 2 + count)
    };
    (tag, &input[header..header + length], &input[header + length..])
}

/// A CSR for CN=`common_name` carrying `spki` (any bytes), self-signed by `key`.
fn csr_with_spki(key: &UserKeyPair, common_name: &str, spki: &[u8], signature_algorithm: &[u8]) -> String {
    let attribute = [der(0x06, &[0x55, 0x04, 0x03]), der(0x0c, common_name.as_bytes())].concat();
    let subject = der(0x30, &der(0x31, &der(0x30, &attribute)));
    let info = der(
        0x30,
        &[der(0x02, &[0]), subject, spki.to_vec(), vec![0xa0, 0x00]].concat(),
    );
    let signature = rcgen::SigningKey::sign(&key.key_pair, &info).expect("sign");
    let signature = der(0x03, &[&[0][..], &signature].concat());
    let csr = der(0x30, &[info, signature_algorithm.to_vec(), signature].concat());
    pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", csr))
}

const SHA256_WITH_RSA: [u8; 15] = [
    0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b, 0x05, 0x00,
];
const ECDSA_WITH_SHA256: [u8; 12] = [0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02];

/// The SPKIs of `rsa` and `ec` (a P-256 key) re-encoded in ways DER or RFC 3279 forbid, each with
/// what it is.
fn non_canonical_spkis(rsa: &UserKeyPair, ec: &UserKeyPair) -> Vec<(&'static str, bool, Vec<u8>)> {
    let rsa_spki = rsa.spki_der();
    let (_, rsa_body, _) = tlv(&rsa_spki);
    let (_, rsa_algorithm, rest) = tlv(rsa_body);
    let rsa_algorithm_tlv = &rsa_body[..rsa_body.len() - rest.len()];
    let (_, bits, _) = tlv(rest);
    let (_, rsa_public_key, _) = tlv(&bits[1..]);
    let (_, modulus, rest) = tlv(rsa_public_key);
    let (_, exponent, _) = tlv(rest);
    let rsa_spki_of = |algorithm: &[u8], public_key: &[u8]| {
        der(
            0x30,
            &[algorithm, &der(0x03, &[&[0][..], public_key].concat())].concat(),
        )
    };
    let padded_modulus = der(
        0x30,
        &[der(0x02, &[&[0][..], modulus].concat()), der(0x02, exponent)].concat(),
    );
    let padded_exponent = der(
        0x30,
        &[der(0x02, modulus), der(0x02, &[&[0][..], exponent].concat())].concat(),
    );
    let ec_spki = ec.spki_der();
    let (_, ec_body, _) = tlv(&ec_spki);
    let (_, ec_algorithm, point) = tlv(ec_body);
    vec![
        ("RSA SPKI, BER long-form length", true, ber_long_length(0x30, rsa_body)),
        (
            "RSA modulus with a leading zero byte",
            true,
            rsa_spki_of(rsa_algorithm_tlv, &padded_modulus),
        ),
        (
            "RSA exponent with a leading zero byte",
            true,
            rsa_spki_of(rsa_algorithm_tlv, &padded_exponent),
        ),
        (
            "RSA algorithm without its NULL parameters",
            true,
            rsa_spki_of(&der(0x30, &der(0x06, tlv(rsa_algorithm).1)), &der(0x30, rsa_public_key)),
        ),
        (
            "EC algorithm with a NULL after the curve",
            false,
            der(
                0x30,
                &[der(0x30, &[ec_algorithm, &[0x05, 0x00]].concat()), point.to_vec()].concat(),
            ),
        ),
        ("EC SPKI, BER long-form length", false, ber_long_length(0x30, ec_body)),
    ]
}

/// Every audit entry, oldest first, read from the dev server's embedded store.
fn audit_entries(data: &std::path::Path) -> Vec<String> {
    let database = rusqlite::Connection::open(data.join("ca.sqlite3")).expect("open the store");
    database
        .prepare("SELECT entry FROM audit_entries ORDER BY id")
        .expect("prepare")
        .query_map([], |row| row.get::<_, Vec<u8>>(0))
        .expect("query")
        .map(|entry| String::from_utf8(entry.expect("row")).expect("UTF-8 entry"))
        .collect()
}

#[tokio::test]
async fn a_key_in_a_non_canonical_encoding_is_refused_and_audited() {
    let directory = tempfile::tempdir().expect("tempdir");
    let data = directory.path().join("data");
    let server = DevServer::start_plaintext_in(&data, "ecdsa-p256");
    let mut client = server.client().await;
    let rsa = UserKeyPair::generate(UserKey::Rsa2048);
    let ec = UserKeyPair::generate(UserKey::EcP256);
    let cases = non_canonical_spkis(&rsa, &ec);
    let mut wrong = Vec::new();
    for (number, (what, is_rsa, spki)) in cases.iter().enumerate() {
        let user_id = format!("user-{number}");
        let (key, algorithm) = if *is_rsa {
            (&rsa, &SHA256_WITH_RSA[..])
        } else {
            (&ec, &ECDSA_WITH_SHA256[..])
        };
        let csr = csr_with_spki(key, &user_id, spki, algorithm);
        match issue(&mut client, &user_id, &csr).await {
            Err(status) if status.code() == Code::InvalidArgument && status.message().len() <= 200 => {}
            Err(status) => wrong.push(format!("{what}: {:?} {}", status.code(), status.message())),
            Ok(_) => wrong.push(format!("{what}: certified")),
        }
        let entries = audit_entries(&data);
        let last = entries.last().expect("an entry");
        if !(last.contains("\nkind issuance-refused\n") && last.contains(&format!("\nsubject {user_id}\n"))) {
            wrong.push(format!("{what}: no issuance-refused entry"));
        }
    }
    assert!(
        wrong.is_empty(),
        "every non-canonical key is INVALID_ARGUMENT and audited: {wrong:#?}"
    );
    // The same keys, canonically encoded, are accepted: the refusals were about the encoding.
    for (user_id, key, algorithm) in [
        ("rsa-user", &rsa, &SHA256_WITH_RSA[..]),
        ("ec-user", &ec, &ECDSA_WITH_SHA256[..]),
    ] {
        let csr = csr_with_spki(key, user_id, &key.spki_der(), algorithm);
        issue(&mut client, user_id, &csr)
            .await
            .expect("a canonical key is certified");
    }
}

#[tokio::test]
async fn pem_with_text_around_it_or_a_second_block_is_refused_and_audited() {
    let directory = tempfile::tempdir().expect("tempdir");
    let data = directory.path().join("data");
    let server = DevServer::start_plaintext_in(&data, "ecdsa-p256");
    let mut client = server.client().await;
    let key = UserKeyPair::generate(UserKey::EcP256);
    let csr = key.csr("carol");
    let cases = [
        (
            "text before",
            format!("Certificate Request:\n    Data: ...\n{csr}"),
            "no text before or after",
        ),
        (
            "text after",
            format!("{csr}-- sent from my phone\n"),
            "no text before or after",
        ),
        (
            "two blocks",
            format!("{csr}{}", UserKeyPair::generate(UserKey::EcP256).csr("carol")),
            "more than one PEM block",
        ),
    ];
    for (number, (what, text, fragment)) in cases.iter().enumerate() {
        match issue(&mut client, "carol", text).await {
            Err(status) if status.code() == Code::InvalidArgument && status.message().contains(fragment) => {}
            other => panic!("{what}: expected INVALID_ARGUMENT mentioning {fragment:?}, got {other:?}"),
        }
        let entries = audit_entries(&data);
        let refusals = entries
            .iter()
            .filter(|entry| entry.contains("\nkind issuance-refused\n") && entry.contains("\nsubject carol\n"))
            .count();
        assert_eq!(refusals, number + 1, "{what}: audited");
    }
    issue(&mut client, "carol", &csr)
        .await
        .expect("the CSR alone is certified");
}

/// Sends `message` to `path` over `channel` as a unary call: a message of another type than the
/// method's, so that the server cannot decode it.
async fn send<M>(channel: &Channel, path: &'static str, message: M) -> Result<(), tonic::Status>
where
    M: Send + Sync + 'static,
    ProtoCodec<M, GetCaInfoResponse>: tonic::codec::Codec<Encode = M, Decode = GetCaInfoResponse>,
{
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready()
        .await
        .map_err(|error| tonic::Status::unavailable(error.to_string()))?;
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(path);
    grpc.unary(tonic::Request::new(message), path, ProtoCodec::default())
        .await
        .map(|_| ())
}

#[tokio::test]
async fn a_message_that_does_not_decode_is_invalid_argument_on_every_service() {
    let directory = tempfile::tempdir().expect("tempdir");
    let server = DevServer::start(directory.path(), "ecdsa-p256");
    // Field 1 as a varint where the method's field 1 is a string (or the reverse), and field 1 a
    // string that is not UTF-8.
    let varint_field = GetInclusionProofRequest {
        leaf_index: 5,
        tree_size: 0,
    };
    let bytes_field = GetCrlResponse {
        crl_der: vec![0xff, 0xfe, 0xfd],
        ..Default::default()
    };
    let identity = server.connect_as("sync-server").await;
    let admin = server.connect_as("admin-alice").await;
    let transparency = server.connect_as("auditor").await;
    let calls = [
        (
            "IssueCertificate, wrong wire type",
            send(&identity, "/e2ee.ca.v1.Identity/IssueCertificate", varint_field).await,
        ),
        (
            "IssueCertificate, user_id not UTF-8",
            send(&identity, "/e2ee.ca.v1.Identity/IssueCertificate", bytes_field.clone()).await,
        ),
        (
            "GetIdentity, wrong wire type",
            send(&admin, "/e2ee.ca.v1.Admin/GetIdentity", varint_field).await,
        ),
        (
            "GetInclusionProof, wrong wire type",
            send(&transparency, "/e2ee.ca.v1.Transparency/GetInclusionProof", bytes_field).await,
        ),
    ];
    for (what, result) in calls {
        match result {
            Err(status) if status.code() == Code::InvalidArgument => {
                assert_eq!(status.message(), e2ee_ca_proto::codec::UNDECODABLE, "{what}");
            }
            other => panic!("{what}: expected INVALID_ARGUMENT, got {other:?}"),
        }
    }
    // A well-formed request on the same channel is served.
    let mut client = e2ee_ca_proto::v1::identity_client::IdentityClient::new(identity);
    let key = UserKeyPair::generate(UserKey::EcP256);
    issue(&mut client, "dave", &key.csr("dave")).await.expect("issued");
}
