//! Delivery bodies kept compressed: GitLab's JSON shrinks about 3.5× (its 7.4 KB sample pipeline
//! delivery to ~2.1 KB), so a row stays on its leaf page instead of a leaf page plus an overflow
//! page, and each group commit writes (and each checkpoint copies) fewer pages.
//!
//! `deliveries.encoding` says how a row's `body` is kept:
//! - NULL: the body as received (rows from before, and bodies compression would not shrink);
//! - [`LZ4`]: what this build writes. The body's length and its CRC-32 (each 4 bytes, little
//!   endian), then an LZ4 block. LZ4 because the writer compresses on its serial path: 6 µs for
//!   the sample where deflate took 39 µs (about a quarter of the writer's time per delivery). The
//!   CRC catches a damaged row, as deflate's Adler-32 did;
//! - [`DEFLATE`]: a zlib stream (RFC 1950), what builds before wrote; still read.

use std::io::Read;

/// `deliveries.encoding` of a body kept as length, CRC-32 and LZ4 block.
pub(crate) const LZ4: &str = "lz4";

/// `deliveries.encoding` of a body kept as a zlib stream (written by builds before [`LZ4`]).
pub(crate) const DEFLATE: &str = "deflate";

/// The length and CRC-32 before the LZ4 block.
const LZ4_HEADER: usize = 8;

/// Bodies shorter than this are kept as received: too small to gain a page.
const MIN_LENGTH: usize = 256;

/// The largest body a stored row may decompress to: GitLab's own delivery limit is 25 MB, and a
/// damaged row must not make the processor allocate without bound.
const MAX_INFLATED: u64 = 64 << 20;

/// How to keep `body`: the bytes to store and their `encoding` (`None`: as received).
pub(crate) fn encode(body: &[u8]) -> (std::borrow::Cow<'_, [u8]>, Option<&'static str>) {
    // Longer than `u32::MAX` cannot be said in the header; the receiver refuses such bodies long
    // before (GitLab sends at most 25 MB), so this only keeps the format honest.
    if body.len() >= MIN_LENGTH
        && let Ok(length) = u32::try_from(body.len())
    {
        let mut kept = vec![0; LZ4_HEADER + lz4_flex::block::get_maximum_output_size(body.len())];
        kept[..4].copy_from_slice(&length.to_le_bytes());
        kept[4..LZ4_HEADER].copy_from_slice(&crc32fast::hash(body).to_le_bytes());
        if let Ok(n) = lz4_flex::block::compress_into(body, &mut kept[LZ4_HEADER..])
            && LZ4_HEADER + n < body.len()
        {
            kept.truncate(LZ4_HEADER + n);
            return (kept.into(), Some(LZ4));
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
    /// The stored bytes are damaged: they do not decompress, or not to what was checksummed.
    #[error("its compressed body is damaged: {0}")]
    Damaged(String),
    /// It decompresses past [`MAX_INFLATED`].
    #[error("its compressed body decompresses past {MAX_INFLATED} bytes")]
    TooLarge,
}

/// The body as received, from the stored bytes and their `encoding`.
pub(crate) fn decode(stored: Vec<u8>, encoding: Option<&str>) -> Result<Vec<u8>, BodyError> {
    decode_within(stored, encoding, MAX_INFLATED)
}

fn decode_within(stored: Vec<u8>, encoding: Option<&str>, max: u64) -> Result<Vec<u8>, BodyError> {
    match encoding {
        None => Ok(stored),
        Some(LZ4) => {
            let header =
                stored.get(..LZ4_HEADER).ok_or_else(|| BodyError::Damaged("shorter than its header".into()))?;
            let length = u32::from_le_bytes(header[..4].try_into().expect("4 bytes"));
            let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
            if u64::from(length) > max {
                return Err(BodyError::TooLarge);
            }
            let body = lz4_flex::block::decompress(&stored[LZ4_HEADER..], length as usize)
                .map_err(|e| BodyError::Damaged(e.to_string()))?;
            if body.len() != length as usize || crc32fast::hash(&body) != crc {
                return Err(BodyError::Damaged("its checksum does not match".into()));
            }
            Ok(body)
        }
        Some(DEFLATE) => {
            let mut out = Vec::with_capacity(stored.len() * 5);
            flate2::read::ZlibDecoder::new(stored.as_slice())
                .take(max + 1)
                .read_to_end(&mut out)
                .map_err(|e| BodyError::Damaged(e.to_string()))?;
            if out.len() as u64 > max {
                return Err(BodyError::TooLarge);
            }
            Ok(out)
        }
        Some(other) => Err(BodyError::Unknown(other.to_owned())),
    }
}

/// `len` bytes compression cannot shrink (a xorshift stream from `seed`), for tests that need a
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

    /// A zlib stream of `body`, as builds before LZ4 kept it.
    fn deflated(body: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::new(2));
        z.write_all(body).unwrap();
        z.finish().unwrap()
    }

    #[test]
    fn gitlabs_sample_is_kept_in_under_a_third_and_reads_back_exactly() {
        let (stored, encoding) = encode(SAMPLE);
        assert_eq!(encoding, Some(LZ4));
        // Well under a 4 KB page with room for the row's headers and key (~0.4 KB): no overflow page.
        assert!(stored.len() < SAMPLE.len() / 3, "{} bytes", stored.len());
        assert_eq!(decode(stored.into_owned(), encoding).unwrap(), SAMPLE);
    }

    #[test]
    fn rows_kept_deflated_by_builds_before_still_read_back() {
        assert_eq!(decode(deflated(SAMPLE), Some(DEFLATE)).unwrap(), SAMPLE);
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
        let stored = stored.into_owned();
        // Every single flipped byte, in the header or the block, is caught by the decompressor or
        // by the checksum, or changes nothing (a match's offset moved onto equal bytes, which the
        // repetitive JSON has): never garbage returned as the body.
        let mut caught = 0;
        for at in 0..stored.len() {
            let mut damaged = stored.clone();
            damaged[at] ^= 0x55;
            match decode_within(damaged, Some(LZ4), MAX_INFLATED) {
                Err(BodyError::Damaged(_) | BodyError::TooLarge) => caught += 1,
                Ok(body) if body == SAMPLE => {}
                other => panic!("byte {at} flipped: {:?}", other.map(|b| b.len())),
            }
        }
        assert!(caught > stored.len() * 9 / 10, "{caught} of {} caught", stored.len());
        assert!(matches!(decode(stored[..LZ4_HEADER - 1].to_vec(), Some(LZ4)), Err(BodyError::Damaged(_))));
        assert!(matches!(decode(stored[..stored.len() - 1].to_vec(), Some(LZ4)), Err(BodyError::Damaged(_))));
        let mut deflate = deflated(SAMPLE);
        let mid = deflate.len() / 2;
        deflate[mid] ^= 0x55;
        assert!(matches!(decode(deflate, Some(DEFLATE)), Err(BodyError::Damaged(_))));
        assert!(matches!(decode(b"{}".to_vec(), Some("zstd")), Err(BodyError::Unknown(e)) if e == "zstd"));
    }

    #[test]
    fn a_body_that_decompresses_past_the_limit_is_refused() {
        let zeros = vec![0u8; 1 << 20];
        let (stored, encoding) = encode(&zeros);
        assert_eq!(encoding, Some(LZ4));
        assert!(stored.len() < 8 << 10);
        assert!(matches!(decode_within(stored.to_vec(), encoding, (1 << 20) - 1), Err(BodyError::TooLarge)));
        assert_eq!(decode_within(stored.into_owned(), encoding, 1 << 20).unwrap(), zeros);
        // A header claiming 4 GB is refused before anything is allocated for it.
        let mut claim = u32::MAX.to_le_bytes().to_vec();
        claim.extend_from_slice(&[0; 8]);
        assert!(matches!(decode(claim, Some(LZ4)), Err(BodyError::TooLarge)));
        let deflate = deflated(&zeros);
        assert!(matches!(decode_within(deflate.clone(), Some(DEFLATE), (1 << 20) - 1), Err(BodyError::TooLarge)));
        assert_eq!(decode_within(deflate, Some(DEFLATE), 1 << 20).unwrap(), zeros);
    }
}
