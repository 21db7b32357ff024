//! KeyBackup calls as the end-to-end tests make them: proofs of possession signed with a test key
//! (the text of key_backup.proto), nonces, syntactically valid wrapped keys and recovery keys.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use e2ee_ca_proto::v1::admin_client::AdminClient;
use e2ee_ca_proto::v1::key_backup_client::KeyBackupClient;
use e2ee_ca_proto::v1::{
    ApproveRequestRequest, CreateBackupChallengeRequest, ProofOfPossession, PutWrappedPrivateKeyRequest,
    RegisterRecoveryKeyRequest,
};
use rcgen::SigningKey;
use sha2::{Digest, Sha256};
use tonic::Code;
use tonic::transport::Channel;

use super::UserKeyPair;

/// A syntactically valid Nextcloud private-key blob (the CA cannot tell it from a real one).
pub fn wrapped_key(seed: u8) -> String {
    [vec![seed; 1200], vec![seed; 12], vec![seed; 40]]
        .iter()
        .map(|part| STANDARD.encode(part))
        .collect::<Vec<_>>()
        .join("|")
}

/// The proof text of key_backup.proto.
pub fn proof_text(purpose: &str, user: &str, nonce: &[u8], payload: &[u8]) -> Vec<u8> {
    format!(
        "e2ee-ca proof-of-possession v1\npurpose {purpose}\nuser {user}\nnonce {}\nsha256 {}\n",
        hex::encode(nonce),
        hex::encode(Sha256::digest(payload))
    )
    .into_bytes()
}

pub async fn nonce(backup: &mut KeyBackupClient<Channel>, user: &str) -> Vec<u8> {
    backup
        .create_backup_challenge(CreateBackupChallengeRequest {
            user_id: user.to_owned(),
        })
        .await
        .expect("challenge")
        .into_inner()
        .nonce
}

/// A proof by `key` over `payload` for `purpose` under `nonce`.
pub fn proof(key: &UserKeyPair, purpose: &str, user: &str, nonce: &[u8], payload: &[u8]) -> ProofOfPossession {
    ProofOfPossession {
        nonce: nonce.to_vec(),
        signature: key
            .key_pair
            .sign(&proof_text(purpose, user, nonce, payload))
            .expect("sign"),
    }
}

pub fn put(user: &str, blob: &str, replace: bool, proof: Option<ProofOfPossession>) -> PutWrappedPrivateKeyRequest {
    PutWrappedPrivateKeyRequest {
        user_id: user.to_owned(),
        wrapped_key: blob.to_owned(),
        replace,
        proof,
    }
}

/// An X25519 SubjectPublicKeyInfo (RFC 8410) as PEM, and its fingerprint.
pub fn recovery_key(seed: u8) -> (String, String) {
    let mut der = vec![0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x6e, 0x03, 0x21, 0x00];
    der.extend_from_slice(&[seed; 32]);
    let fingerprint = hex::encode(Sha256::digest(&der));
    (pem::encode(&pem::Pem::new("PUBLIC KEY", der)), fingerprint)
}

/// Registers the recovery key `seed` (requested by admin-alice, approved by admin-bob).
pub async fn register(alice: &mut AdminClient<Channel>, bob: &mut AdminClient<Channel>, seed: u8) -> String {
    let (public_key_pem, fingerprint) = recovery_key(seed);
    let request = alice
        .register_recovery_key(RegisterRecoveryKeyRequest {
            public_key_pem,
            ceremony_reference: format!("ceremony {seed}"),
            reason: "enable recovery".to_owned(),
        })
        .await
        .expect("registration opened")
        .into_inner()
        .request
        .expect("request");
    assert_eq!(request.kind, "recovery-key-registration");
    assert_eq!(request.key_fingerprint, fingerprint);
    assert_eq!(
        alice
            .approve_request(ApproveRequestRequest {
                request_id: request.request_id.clone()
            })
            .await
            .expect_err("self-approval")
            .code(),
        Code::PermissionDenied,
        "self-approval"
    );
    bob.approve_request(ApproveRequestRequest {
        request_id: request.request_id,
    })
    .await
    .expect("approved");
    fingerprint
}
