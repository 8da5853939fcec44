//! The protobuf codec of the `switchyard.v1` services: prost's, except that a request that
//! cannot be decoded (a wrong wire type, a truncated field, a string that is not UTF-8) is the
//! caller's mistake and is answered INVALID_ARGUMENT saying what could not be decoded — tonic's
//! default answers INTERNAL, which would break the contract's promise that no caller mistake
//! maps to INTERNAL. The build script points the generated code here (`codec_path`).

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic::{Code, Status};
use tonic_prost::{ProstDecoder, ProstEncoder};
use tonic_types::{ErrorDetails, StatusExt};

/// Longest decode error echoed back.
const DESCRIPTION_BYTES_MAX: usize = 400;

/// prost encoding; decode failures are INVALID_ARGUMENT.
#[derive(Debug, Clone)]
pub struct StrictCodec<T, U> {
    _pd: PhantomData<(T, U)>,
}

impl<T, U> Default for StrictCodec<T, U> {
    fn default() -> Self {
        StrictCodec { _pd: PhantomData }
    }
}

impl<T, U> Codec for StrictCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = StrictDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        StrictDecoder {
            inner: ProstDecoder::new(BufferSettings::default()),
        }
    }
}

/// prost decoding with decode failures as INVALID_ARGUMENT.
#[derive(Debug, Clone)]
pub struct StrictDecoder<U> {
    inner: ProstDecoder<U>,
}

impl<U: Message + Default> Decoder for StrictDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        U::decode(buf).map(Some).map_err(|e| {
            let mut message = format!("the request is not a valid protobuf message: {e}");
            if message.len() > DESCRIPTION_BYTES_MAX {
                let mut end = DESCRIPTION_BYTES_MAX;
                while !message.is_char_boundary(end) {
                    end -= 1;
                }
                message.truncate(end);
                message.push('…');
            }
            let mut details = ErrorDetails::new();
            details
                .set_error_info(
                    "INVALID_INPUT",
                    crate::ERROR_DOMAIN,
                    [("field".to_string(), "(message)".to_string())],
                )
                .add_bad_request_violation("(message)", message.clone());
            Status::with_error_details(
                Code::InvalidArgument,
                format!("field `(message)`: {message}"),
                details,
            )
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.inner.buffer_settings()
    }
}
