//! A protobuf message already encoded (a cached page), sent as is: tonic's prost codec
//! writes it into the response frame without decoding and re-encoding it.

use bytes::{Buf, BufMut, Bytes};

/// The bytes of an encoded protobuf message.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EncodedMessage(pub Bytes);

impl prost::Message for EncodedMessage {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        buf.put_slice(&self.0);
    }

    // Only the server sends this type and nothing decodes it; skipping keeps prost's contract.
    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: prost::encoding::WireType,
        buf: &mut impl Buf,
        ctx: prost::encoding::DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        prost::encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        self.0.len()
    }

    fn clear(&mut self) {
        self.0 = Bytes::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn encodes_verbatim() {
        let inner = crate::pb::GetSinceResponse {
            start: 7,
            limit: 3,
            ..Default::default()
        };
        let bytes = Bytes::from(inner.encode_to_vec());
        let wire = EncodedMessage(bytes.clone()).encode_to_vec();
        assert_eq!(wire, bytes);
        assert_eq!(
            crate::pb::GetSinceResponse::decode(&wire[..]).ok(),
            Some(inner)
        );
    }
}
