//! Known-answer tests from `testdata/`: RFC 6962 roots and proofs, and signed notes (see its README).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use tlog::Hash;
use tlog::key::VerifierKey;
use tlog::merkle::tree_root;
use tlog::note::{KeyName, SignedNote};
use tlog::proof::{consistency_proof, inclusion_proof, verify_consistency, verify_inclusion};

fn testdata(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata").join(name)
}

fn decode_hex(text: &str) -> Result<Vec<u8>> {
    ensure!(text.len() % 2 == 0, "odd-length hex {text:?}");
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).with_context(|| format!("hex {text:?}")))
        .collect()
}

fn decode_hashes(text: &str) -> Result<Vec<Hash>> {
    text.split_whitespace()
        .map(|hex| {
            let bytes = decode_hex(hex)?;
            <Hash>::try_from(bytes).map_err(|_| anyhow::anyhow!("{hex} is not 32 bytes"))
        })
        .collect()
}

/// Blank-line-separated blocks of `key: value` lines, without `#` comments.
fn parse_blocks(text: &str) -> Result<Vec<BTreeMap<String, String>>> {
    let mut blocks = Vec::new();
    for block in text.split("\n\n") {
        let mut fields = BTreeMap::new();
        for line in block.lines().filter(|line| !line.starts_with('#')) {
            let (key, value) = line
                .split_once(':')
                .with_context(|| format!("line {line:?} has no key"))?;
            fields.insert(key.to_owned(), value.trim().to_owned());
        }
        if !fields.is_empty() {
            blocks.push(fields);
        }
    }
    Ok(blocks)
}

fn field<'a>(case: &'a BTreeMap<String, String>, key: &str) -> Result<&'a str> {
    case.get(key)
        .map(String::as_str)
        .with_context(|| format!("missing {key}"))
}

fn number(case: &BTreeMap<String, String>, key: &str) -> Result<u64> {
    field(case, key)?
        .parse()
        .with_context(|| format!("{key} is not a number"))
}

/// Checks an outcome against `expect: ok` or `expect: fail_<Variant>`; errors are `{:?}` text.
fn check_outcome(expect: &str, outcome: Result<(), String>) -> Result<()> {
    match (expect.strip_prefix("fail_"), outcome) {
        (None, Ok(())) => Ok(()),
        (None, Err(error)) => bail!("expected success, got {error}"),
        (Some(variant), Ok(())) => bail!("expected {variant}, got success"),
        (Some(variant), Err(error)) => {
            ensure!(error.starts_with(variant), "expected {variant}, got {error}");
            Ok(())
        }
    }
}

fn debug_text<E: std::fmt::Debug>(error: E) -> String {
    format!("{error:?}")
}

fn check_tree_case(leaves: &[Hash], case: &BTreeMap<String, String>) -> Result<()> {
    let expect = field(case, "expect")?;
    let size = number(case, "size")?;
    let root_of = |size: u64| tree_root(&leaves[..size.min(leaves.len() as u64) as usize]);
    match field(case, "kind")? {
        "root" => {
            let root = decode_hashes(field(case, "root")?)?;
            let outcome = if root == [root_of(size)] {
                Ok(())
            } else {
                Err("root differs".to_owned())
            };
            check_outcome(expect, outcome)
        }
        "inclusion" => {
            let index = number(case, "index")?;
            let proof = decode_hashes(field(case, "proof")?)?;
            if expect == "ok" {
                let generated = inclusion_proof(leaves, index, size)?;
                ensure!(generated == proof, "generated {generated:?}");
            }
            let leaf = leaves[(index % leaves.len() as u64) as usize];
            let outcome = verify_inclusion(&leaf, index, size, &proof, &root_of(size));
            check_outcome(expect, outcome.map_err(debug_text))
        }
        "consistency" => {
            let old_size = number(case, "old-size")?;
            let proof = decode_hashes(field(case, "proof")?)?;
            if expect == "ok" {
                let generated = consistency_proof(leaves, old_size, size)?;
                ensure!(generated == proof, "generated {generated:?}");
            }
            let (old_root, new_root) = (root_of(old_size), root_of(size));
            let outcome = verify_consistency(old_size, size, &old_root, &new_root, &proof);
            check_outcome(expect, outcome.map_err(debug_text))
        }
        other => bail!("unknown kind {other}"),
    }
}

#[test]
fn rfc6962_vectors() -> Result<()> {
    let text = std::fs::read_to_string(testdata("rfc6962.txt"))?;
    let blocks = parse_blocks(&text)?;
    let (header, cases) = blocks.split_first().context("no blocks")?;
    let leaves = field(header, "leaves")?
        .split_whitespace()
        .map(|hex| Ok(tlog::leaf_hash(&decode_hex(hex.trim_start_matches('-'))?)))
        .collect::<Result<Vec<Hash>>>()?;
    ensure!(leaves.len() == 8);
    for case in cases {
        let name = field(case, "case")?;
        check_tree_case(&leaves, case).with_context(|| format!("case {name}"))?;
    }
    ensure!(cases.len() >= 25, "only {} cases", cases.len());
    Ok(())
}

fn check_note_case(path: &Path) -> Result<()> {
    let text = std::fs::read_to_string(path)?;
    let (header, note) = text.split_once("-----\n").context("no ----- line")?;
    let mut expect = None;
    let mut verifiers = Vec::new();
    for line in header.lines() {
        match line.split_once(": ") {
            Some(("expect", value)) => expect = Some(value),
            Some(("vkey", vkey)) => {
                let verifier = VerifierKey::parse(vkey)?;
                ensure!(verifier.to_string() == vkey, "vkey does not round-trip");
                verifiers.push(verifier);
            }
            _ => bail!("bad header line {line:?}"),
        }
    }
    let expect = expect.context("no expect: line")?;
    let outcome = SignedNote::parse(note).map_err(debug_text).and_then(|parsed| {
        let names = parsed.verify(&verifiers).map_err(debug_text)?;
        Ok((parsed, names))
    });
    match expect.strip_prefix("ok") {
        Some(expected_names) => {
            let (parsed, names) = outcome.map_err(|error| anyhow::anyhow!(error))?;
            let names: Vec<&str> = names.iter().map(KeyName::as_str).collect();
            ensure!(
                names == expected_names.split_whitespace().collect::<Vec<_>>(),
                "verified by {names:?}"
            );
            ensure!(parsed.to_string() == note, "does not serialize back to the same bytes");
            Ok(())
        }
        None => check_outcome(expect, outcome.map(|_| ())),
    }
}

#[test]
fn signed_note_vectors() -> Result<()> {
    let mut count = 0;
    for entry in std::fs::read_dir(testdata("notes"))? {
        let path = entry?.path();
        check_note_case(&path).with_context(|| format!("{}", path.display()))?;
        count += 1;
    }
    ensure!(count >= 14, "only {count} note vectors");
    Ok(())
}
