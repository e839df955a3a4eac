//! A strict reader of protobuf wire bytes, for the ingest's fast path (see
//! [`crate::notification::Prepared`]): it walks a message's fields without
//! decoding them into owned structs, and notices whether every varint it read
//! was minimally encoded (the form prost writes), so that a value's bytes can be
//! kept as received when they equal prost's own encoding of it.

/// One field's payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Payload<'a> {
    /// Wire type 0.
    Varint(u64),
    /// Wire type 1.
    Fixed64(u64),
    /// Wire type 2.
    Len(&'a [u8]),
    /// Wire type 5.
    Fixed32(u32),
}

/// The fields of one message, in wire order.
#[derive(Debug, Clone)]
pub(crate) struct Fields<'a> {
    rest: &'a [u8],
    /// Whether every varint read so far (tags and lengths included) was in
    /// its shortest form.
    pub(crate) minimal: bool,
}

impl<'a> Fields<'a> {
    /// The fields of the message `bytes`.
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Self {
            rest: bytes,
            minimal: true,
        }
    }

    /// The next field as `(number, payload)`; `Err` when the bytes are not a
    /// well-formed message (or use the deprecated groups).
    #[allow(
        clippy::should_implement_trait,
        reason = "fallible: Iterator would hide the error in an Option<Result>"
    )]
    #[inline]
    pub(crate) fn next(&mut self) -> Result<Option<(u32, Payload<'a>)>, Malformed> {
        let tag = match self.rest {
            [] => return Ok(None),
            // Fields 1 to 15: a one-byte tag.
            [b, rest @ ..] if *b < 0x80 => {
                self.rest = rest;
                u64::from(*b)
            }
            _ => self.varint()?,
        };
        // A key beyond 32 bits is malformed even when its number would fit
        // (prost rejects it: a fast path must never accept more).
        let number = u32::try_from(tag).map_err(|_| Malformed)? >> 3;
        if number == 0 {
            return Err(Malformed);
        }
        let payload = match tag & 7 {
            0 => Payload::Varint(self.varint()?),
            1 => Payload::Fixed64(u64::from_le_bytes(
                self.take(8)?.try_into().map_err(|_| Malformed)?,
            )),
            2 => {
                let len = match self.rest {
                    [b, rest @ ..] if *b < 0x80 => {
                        self.rest = rest;
                        usize::from(*b)
                    }
                    _ => usize::try_from(self.varint()?).map_err(|_| Malformed)?,
                };
                Payload::Len(self.take(len)?)
            }
            5 => Payload::Fixed32(u32::from_le_bytes(
                self.take(4)?.try_into().map_err(|_| Malformed)?,
            )),
            _ => return Err(Malformed),
        };
        Ok(Some((number, payload)))
    }

    #[inline]
    fn take(&mut self, n: usize) -> Result<&'a [u8], Malformed> {
        if self.rest.len() < n {
            return Err(Malformed);
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn varint(&mut self) -> Result<u64, Malformed> {
        let mut value = 0u64;
        for (i, &b) in self.rest.iter().enumerate().take(10) {
            value |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                if i == 9 && b > 1 {
                    return Err(Malformed);
                }
                // A last byte of 0 (after the first) pads the number.
                if i > 0 && b == 0 {
                    self.minimal = false;
                }
                self.rest = &self.rest[i + 1..];
                return Ok(value);
            }
        }
        Err(Malformed)
    }
}

/// The bytes are not a well-formed protobuf message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Malformed;

#[cfg(test)]
mod tests {
    use netsync_proto::gnmi;
    use prost::Message;

    use super::*;

    #[test]
    fn reads_what_prost_writes() {
        let path = gnmi::Path {
            origin: "oc".into(),
            elem: vec![gnmi::PathElem {
                name: "a".into(),
                key: [("k".to_string(), "v".to_string())].into(),
            }],
            target: "t".into(),
            ..Default::default()
        };
        let bytes = path.encode_to_vec();
        let mut fields = Fields::new(&bytes);
        assert_eq!(fields.next().unwrap(), Some((2, Payload::Len(b"oc"))));
        let Some((3, Payload::Len(elem))) = fields.next().unwrap() else {
            panic!("elem expected");
        };
        assert_eq!(elem, path.elem[0].encode_to_vec());
        assert_eq!(fields.next().unwrap(), Some((4, Payload::Len(b"t"))));
        assert_eq!(fields.next().unwrap(), None);
        assert!(fields.minimal);

        let value = gnmi::TypedValue {
            value: Some(gnmi::typed_value::Value::IntVal(-1)),
        }
        .encode_to_vec();
        let mut fields = Fields::new(&value);
        assert_eq!(fields.next().unwrap(), Some((2, Payload::Varint(u64::MAX))));
        assert!(fields.minimal);
    }

    #[test]
    fn notices_padding_and_rejects_garbage() {
        // Field 2, varint 1 written in two bytes.
        let mut fields = Fields::new(&[0x10, 0x81, 0x00]);
        assert_eq!(fields.next().unwrap(), Some((2, Payload::Varint(1))));
        assert!(!fields.minimal);
        // Truncated length, field 0, group wire type, an 11-byte varint.
        let long = [[0x10].as_slice(), &[0x80; 10], &[0x01]].concat();
        // A key of 33 bits (field 2^29 + 100, varint 0), which prost rejects.
        let wide_key = [0xa0, 0x86, 0x80, 0x80, 0x10, 0x00];
        for bad in [
            &[0x0a, 0x05, 1][..],
            &[0x00, 0x01],
            &[0x0b],
            &long,
            &wide_key,
        ] {
            assert_eq!(Fields::new(bad).next(), Err(Malformed), "{bad:?}");
        }
    }
}
