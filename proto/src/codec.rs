//! The codec of every e2ee.ca.v1 service and client: prost's, except that bytes that do not decode as the expected message are INVALID_ARGUMENT with a fixed message.

use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// The status message for bytes that are not a protobuf encoding of the expected message. Fixed
/// text: prost's own names the field and the failure, none of which the caller needs.
pub const UNDECODABLE: &str = "the message is not a valid protobuf encoding of its e2ee.ca.v1 type";

/// `tonic_prost::ProstCodec` with `ProtoDecoder`; `proto/build.rs` names it as the generated
/// services' and clients' codec. On a client, a response that does not decode is therefore
/// INVALID_ARGUMENT too (only a server that is not this contract's sends one).
#[derive(Debug, Clone)]
pub struct ProtoCodec<T, U>(ProstCodec<T, U>);

impl<T, U> Default for ProtoCodec<T, U> {
    fn default() -> Self {
        ProtoCodec(ProstCodec::default())
    }
}

impl<T, U> Codec for ProtoCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProtoDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        self.0.encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProtoDecoder(self.0.decoder())
    }
}

/// prost's decoder, whose decode errors (tonic makes them INTERNAL) are INVALID_ARGUMENT: the
/// sender's bytes are wrong, not the receiver.
#[derive(Debug, Clone, Default)]
pub struct ProtoDecoder<U>(ProstDecoder<U>);

impl<U: prost::Message + Default> Decoder for ProtoDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        // prost's decoder fails only when the bytes are not a valid encoding of `U`.
        self.0.decode(buf).map_err(|_| Status::invalid_argument(UNDECODABLE))
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}
