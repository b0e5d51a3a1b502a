//! Delivery bodies kept deflated: GitLab's JSON shrinks about 4.5× (its 7.4 KB sample pipeline
//! delivery to ~1.6 KB), so a row fits in under half a 4 KB page instead of a leaf page plus an
//! overflow page, and each group commit writes (and each checkpoint copies) fewer pages.
//!
//! `deliveries.encoding` says how a row's `body` is kept: NULL, the body as received (rows from
//! before, and bodies that deflate would not shrink); [`DEFLATE`], a zlib stream (RFC 1950, what
//! HTTP calls `deflate`: its Adler-32 checksum catches a damaged row).

use std::io::{Read, Write};

use flate2::Compression;

/// `deliveries.encoding` of a body kept as a zlib stream.
pub(crate) const DEFLATE: &str = "deflate";

/// zlib-rs's level 2 (its `deflate_fast`): level 1 is its `deflate_quick`, whose static Huffman
/// codes leave GitLab's sample at ~2 KB, just over half a page with the row's headers; level 2
/// takes it to ~1.5 KB for a few microseconds more.
const LEVEL: u32 = 2;

/// Bodies shorter than this are kept as received: too small to gain a page.
const MIN_LENGTH: usize = 256;

/// The largest body a stored zlib stream may inflate to: GitLab's own delivery limit is 25 MB,
/// and a damaged row must not make the processor allocate without bound.
const MAX_INFLATED: u64 = 64 << 20;

/// How to keep `body`: the bytes to store and their `encoding` (`None`: as received).
pub(crate) fn encode(body: &[u8]) -> (std::borrow::Cow<'_, [u8]>, Option<&'static str>) {
    if body.len() >= MIN_LENGTH {
        // The writer grows its own Vec (zlib-rs 0.6.8 panicked when handed an output buffer with
        // less than the worst case's room; `Compress::compress_vec` would need `deflateBound`).
        let mut z = flate2::write::ZlibEncoder::new(Vec::with_capacity(body.len() / 3), Compression::new(LEVEL));
        if let Ok(deflated) = z.write_all(body).and_then(|()| z.finish())
            && deflated.len() < body.len()
        {
            return (deflated.into(), Some(DEFLATE));
        }
    }
    (body.into(), None)
}

/// Why a stored body cannot be read back.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
    /// An `encoding` this build does not know (a newer cloudci wrote the row).
    #[error("stored with an unknown encoding {0:?}")]
    Unknown(String),
    /// The zlib stream is damaged.
    #[error("its deflated body is damaged: {0}")]
    Damaged(std::io::Error),
    /// It inflates past [`MAX_INFLATED`].
    #[error("its deflated body inflates past {MAX_INFLATED} bytes")]
    TooLarge,
}

/// The body as received, from the stored bytes and their `encoding`.
pub(crate) fn decode(stored: Vec<u8>, encoding: Option<&str>) -> Result<Vec<u8>, BodyError> {
    decode_within(stored, encoding, MAX_INFLATED)
}

fn decode_within(stored: Vec<u8>, encoding: Option<&str>, max: u64) -> Result<Vec<u8>, BodyError> {
    match encoding {
        None => Ok(stored),
        Some(DEFLATE) => {
            let mut out = Vec::with_capacity(stored.len() * 5);
            flate2::read::ZlibDecoder::new(stored.as_slice())
                .take(max + 1)
                .read_to_end(&mut out)
                .map_err(BodyError::Damaged)?;
            if out.len() as u64 > max {
                return Err(BodyError::TooLarge);
            }
            Ok(out)
        }
        Some(other) => Err(BodyError::Unknown(other.to_owned())),
    }
}

/// `len` bytes deflate cannot shrink (a xorshift stream from `seed`), for tests that need a
/// body's stored size to be its size.
#[cfg(test)]
pub(crate) fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15_u64 ^ seed;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &[u8] = include_bytes!("../../../gitlab/tests/fixtures/webhook-pipeline-event.json");

    #[test]
    fn gitlabs_sample_deflates_to_under_a_quarter_and_reads_back_exactly() {
        let (stored, encoding) = encode(SAMPLE);
        assert_eq!(encoding, Some(DEFLATE));
        // Under half a 4 KB page with room for the row's headers and key (~0.4 KB).
        assert!(stored.len() < 1_700, "{} bytes", stored.len());
        assert_eq!(decode(stored.into_owned(), encoding).unwrap(), SAMPLE);
    }

    #[test]
    fn small_and_incompressible_bodies_are_kept_as_received() {
        assert_eq!(encode(b"{}"), (std::borrow::Cow::Borrowed(&b"{}"[..]), None));
        let noise = noise(4096, 0);
        let (stored, encoding) = encode(&noise);
        assert_eq!(encoding, None);
        assert_eq!(stored, noise.as_slice());
        assert_eq!(decode(noise.clone(), None).unwrap(), noise);
    }

    #[test]
    fn a_damaged_or_unknown_body_is_an_error_not_garbage() {
        let (stored, _) = encode(SAMPLE);
        let mut damaged = stored.into_owned();
        let mid = damaged.len() / 2;
        damaged[mid] ^= 0x55;
        assert!(matches!(decode(damaged, Some(DEFLATE)), Err(BodyError::Damaged(_))));
        assert!(matches!(decode(b"{}".to_vec(), Some("zstd")), Err(BodyError::Unknown(e)) if e == "zstd"));
    }

    #[test]
    fn a_stream_that_inflates_past_the_limit_is_refused() {
        let zeros = vec![0u8; 1 << 20];
        let (stored, encoding) = encode(&zeros);
        assert_eq!(encoding, Some(DEFLATE));
        assert!(stored.len() < 8 << 10);
        assert!(matches!(decode_within(stored.to_vec(), encoding, (1 << 20) - 1), Err(BodyError::TooLarge)));
        assert_eq!(decode_within(stored.into_owned(), encoding, 1 << 20).unwrap(), zeros);
    }
}
