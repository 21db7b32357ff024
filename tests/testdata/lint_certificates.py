"""Reads certificates the way strict relying parties do, for tests/profile_lint.rs.

Usage: lint_certificates.py CA_DER [USER_DER ...]

Each certificate is loaded with Python's `cryptography` (strict DER), every extension is read, and
the signature is checked under the CA certificate; then pkilint lints it with the RFC 5280
certificate linter (`lint_pkix_cert`) and the issuer/subject chain linter
(`lint_pkix_signer_signee_cert_chain`; the CA certificate is its own issuer). pkilint has no
profile for a private CA's end-entity certificates (its CA/B Forum linters are for TLS and S/MIME
certificates, which these are not); the RFC 5280 linters apply to both a root and a leaf.

Prints `unreadable FILE REASON` for each certificate `cryptography` cannot read, and one line per
pkilint finding, `finding FILE SEVERITY CODE MESSAGE` (every severity).
"""

import sys

from cryptography import x509

from pkilint import loader
from pkilint.bin import lint_pkix_signer_signee_cert_chain as chain_lint
from pkilint.pkix import certificate, extension, name


def read_strictly(path, issuer):
    """Loads `path` with cryptography, reads every extension and checks it was signed by `issuer`."""
    with open(path, "rb") as file:
        parsed = x509.load_der_x509_certificate(file.read())
    # `extensions` parses every extension; a DER violation (an encoded DEFAULT, say) raises here.
    for ext in parsed.extensions:
        _ = ext.value
    parsed.public_key()
    parsed.verify_directly_issued_by(issuer if issuer is not None else parsed)
    return parsed


def certificate_validator():
    """The validator `lint_pkix_cert lint` runs."""
    return certificate.create_pkix_certificate_validator_container(
        certificate.create_decoding_validators(
            name.ATTRIBUTE_TYPE_MAPPINGS, extension.EXTENSION_MAPPINGS
        ),
        [
            certificate.create_issuer_validator_container([]),
            certificate.create_validity_validator_container(),
            certificate.create_subject_validator_container([]),
            certificate.create_extensions_validator_container([]),
            certificate.create_spki_validator_container([]),
        ],
    )


def load(path, document_name=None, collection=None):
    with open(path, "rb") as file:
        return loader.RFC5280CertificateDocumentLoader().load_der_document(
            file.read(), document_name, path, collection
        )


def report(path, results):
    for result in results:
        for description in result.finding_descriptions:
            finding = description.finding
            message = (description.message or "").replace("\n", " ")
            print(f"finding {path} {finding.severity.name} {finding.code} {message}")


def lint_chain(issuer_path, subject_path):
    """What `lint_pkix_signer_signee_cert_chain lint ISSUER SUBJECT` runs."""
    collection = {}
    collection["issuer"] = load(issuer_path, "issuer", collection)
    collection["subject"] = load(subject_path, "subject", collection)
    decoding = chain_lint.create_decoder_validation_container()
    results = decoding.validate(collection["issuer"].root)
    results += decoding.validate(collection["subject"].root)
    results += chain_lint.create_issuer_validation_container().validate(collection["issuer"].root)
    results += chain_lint.create_subject_validation_container().validate(collection["subject"].root)
    return results


def main(paths):
    ca_path = paths[0]
    ca = None
    for path in paths:
        try:
            parsed = read_strictly(path, ca)
        except Exception as error:  # noqa: BLE001: any failure to read is a finding of the test
            print(f"unreadable {path} {type(error).__name__}: {error}".replace("\n", " "))
            continue
        if path == ca_path:
            ca = parsed
    validator = certificate_validator()
    for path in paths:
        report(path, validator.validate(load(path).root))
        report(path, lint_chain(ca_path, path))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
