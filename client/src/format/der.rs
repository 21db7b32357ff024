//! Just enough ASN.1 for CMS: a DER writer and a BER/DER reader (definite and indefinite lengths).
//!
//! Only single-byte tags occur in CMS SignedData. Readers accept BER's indefinite lengths because
//! BouncyCastle (Android) emits them; writers always produce DER.

/// Why bytes are not the ASN.1 this reader understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed ASN.1: {0}")]
pub(crate) struct DerError(pub(crate) &'static str);

/// Nesting deeper than this is refused (bounds recursion on hostile input).
const MAX_DEPTH: usize = 32;

/// Tags used by CMS.
pub(crate) mod tag {
    pub(crate) const INTEGER: u8 = 0x02;
    pub(crate) const OCTET_STRING: u8 = 0x04;
    pub(crate) const NULL: u8 = 0x05;
    pub(crate) const OID: u8 = 0x06;
    pub(crate) const UTC_TIME: u8 = 0x17;
    pub(crate) const SEQUENCE: u8 = 0x30;
    pub(crate) const SET: u8 = 0x31;
    /// `[0]` constructed (EXPLICIT, or IMPLICIT over a constructed type).
    pub(crate) const CONTEXT_0: u8 = 0xa0;
}

/// One element: its tag and its content (without header, and without end-of-contents for indefinite lengths).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Element<'a> {
    pub(crate) tag: u8,
    pub(crate) content: &'a [u8],
}

/// Reads one element from the front of `input`; returns it and the rest.
pub(crate) fn read(input: &[u8]) -> Result<(Element<'_>, &[u8]), DerError> {
    read_at_depth(input, 0)
}

fn read_at_depth(input: &[u8], depth: usize) -> Result<(Element<'_>, &[u8]), DerError> {
    if depth > MAX_DEPTH {
        return Err(DerError("nested too deeply"));
    }
    let (&tag, after_tag) = input.split_first().ok_or(DerError("truncated tag"))?;
    if tag & 0x1f == 0x1f {
        return Err(DerError("multi-byte tag"));
    }
    let (&first_length, after_length_byte) = after_tag.split_first().ok_or(DerError("truncated length"))?;
    if first_length == 0x80 {
        // Indefinite length (BER, constructed only): children until the end-of-contents octets 00 00.
        if tag & 0x20 == 0 {
            return Err(DerError("indefinite length on a primitive element"));
        }
        let mut remaining = after_length_byte;
        loop {
            if remaining.starts_with(&[0, 0]) {
                let content_len = after_length_byte.len() - remaining.len();
                let content = &after_length_byte[..content_len];
                return Ok((Element { tag, content }, &remaining[2..]));
            }
            let (_, rest) = read_at_depth(remaining, depth + 1)?;
            remaining = rest;
        }
    }
    let (length, after_header) = if first_length < 0x80 {
        (usize::from(first_length), after_length_byte)
    } else {
        let count = usize::from(first_length & 0x7f);
        if count > 4 || after_length_byte.len() < count {
            return Err(DerError("bad length"));
        }
        let length = after_length_byte[..count]
            .iter()
            .fold(0usize, |length, byte| (length << 8) | usize::from(*byte));
        (length, &after_length_byte[count..])
    };
    if after_header.len() < length {
        return Err(DerError("truncated content"));
    }
    let (content, rest) = after_header.split_at(length);
    Ok((Element { tag, content }, rest))
}

/// Reads one element that must have `expected` tag.
pub(crate) fn read_tagged<'a>(
    input: &'a [u8],
    expected: u8,
    what: &'static str,
) -> Result<(Element<'a>, &'a [u8]), DerError> {
    let (element, rest) = read(input)?;
    if element.tag != expected {
        return Err(DerError(what));
    }
    Ok((element, rest))
}

/// All elements of a constructed element's content, in order.
pub(crate) fn children(content: &[u8]) -> Result<Vec<Element<'_>>, DerError> {
    let mut elements = Vec::new();
    let mut remaining = content;
    while !remaining.is_empty() {
        let (element, rest) = read(remaining)?;
        elements.push(element);
        remaining = rest;
    }
    Ok(elements)
}

/// DER encoding of one element.
pub(crate) fn encode(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut output = Vec::with_capacity(content.len() + 6);
    output.push(tag);
    let length = content.len();
    if length < 0x80 {
        output.push(length as u8);
    } else {
        let bytes = length.to_be_bytes();
        let skip = bytes.iter().take_while(|byte| **byte == 0).count();
        output.push(0x80 | (bytes.len() - skip) as u8);
        output.extend_from_slice(&bytes[skip..]);
    }
    output.extend_from_slice(content);
    output
}

/// DER encoding of a constructed element from already-encoded parts.
pub(crate) fn encode_parts(tag: u8, parts: &[&[u8]]) -> Vec<u8> {
    encode(tag, &parts.concat())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn definite_and_indefinite_lengths_are_read() {
        let long = vec![7u8; 300];
        let encoded = encode(tag::OCTET_STRING, &long);
        assert_eq!(&encoded[..4], &[0x04, 0x82, 0x01, 0x2c]);
        let (element, rest) = read(&encoded).expect("read");
        assert_eq!(
            (element.tag, element.content, rest),
            (tag::OCTET_STRING, long.as_slice(), &[][..])
        );

        // SEQUENCE (indefinite) { INTEGER 1, SEQUENCE (indefinite) { NULL } } then a trailing byte.
        let ber = [
            0x30, 0x80, 0x02, 0x01, 0x01, 0x30, 0x80, 0x05, 0x00, 0x00, 0x00, 0x00, 0x00, 0xff,
        ];
        let (element, rest) = read(&ber).expect("read");
        assert_eq!(rest, &[0xff]);
        let inner = children(element.content).expect("children");
        assert_eq!(inner.len(), 2);
        assert_eq!(inner[0].content, &[1]);
        assert_eq!(children(inner[1].content).expect("children")[0].tag, tag::NULL);
    }

    #[test]
    fn malformed_input_is_an_error() {
        for bad in [
            &[][..],
            &[0x30],
            &[0x30, 0x05, 0x00],
            &[0x30, 0x85, 1, 1, 1, 1, 1],
            &[0x04, 0x80, 0x00, 0x00],
            &[0x30, 0x80, 0x02, 0x01, 0x01],
            &[0x1f, 0x01, 0x00],
        ] {
            assert!(read(bad).is_err(), "{bad:x?}");
        }
        let deep: Vec<u8> = std::iter::repeat_n([0x30u8, 0x80], 100).flatten().collect();
        assert!(read(&deep).is_err());
    }

    proptest! {
        #[test]
        fn encode_then_read_is_the_identity(tag_byte in any::<u8>().prop_filter("single-byte tag", |byte| byte & 0x1f != 0x1f),
                                            content in proptest::collection::vec(any::<u8>(), 0..70_000usize)) {
            let encoded = encode(tag_byte, &content);
            let (element, rest) = read(&encoded).expect("read");
            prop_assert_eq!(element.tag, tag_byte);
            prop_assert_eq!(element.content, content.as_slice());
            prop_assert!(rest.is_empty());
        }

        #[test]
        fn reading_arbitrary_bytes_does_not_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = read(&bytes).map(|(element, _)| children(element.content));
        }
    }
}
