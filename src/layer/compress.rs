//! Blob codecs: gzip, zstd or none, chosen by media type for writing and by magic bytes for
//! reading. Output bytes depend only on the input and the level (reproducible images).

use std::io::{self, BufRead, BufReader, Read, Write};

use flate2::write::GzEncoder;

use crate::image::media;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    Uncompressed,
    Gzip,
    Zstd,
}

impl Compression {
    /// The OCI layer media type for this codec.
    pub fn oci_media_type(self) -> &'static str {
        match self {
            Compression::Uncompressed => media::OCI_LAYER,
            Compression::Gzip => media::OCI_LAYER_GZIP,
            Compression::Zstd => media::OCI_LAYER_ZSTD,
        }
    }

    /// The codec a layer media type names (Docker's and OCI's), if any.
    pub fn from_media_type(media_type: &str) -> Option<Compression> {
        match media_type {
            media::OCI_LAYER | media::DOCKER_LAYER => Some(Compression::Uncompressed),
            media::OCI_LAYER_GZIP | media::DOCKER_LAYER_GZIP => Some(Compression::Gzip),
            media::OCI_LAYER_ZSTD => Some(Compression::Zstd),
            _ => None,
        }
    }

    /// The default level: gzip 1 and zstd 3 (fast; see docs/performance.md).
    pub fn default_level(self) -> i32 {
        match self {
            Compression::Uncompressed => 0,
            Compression::Gzip => 1,
            Compression::Zstd => 3,
        }
    }

    /// Parse the `compression=` output option.
    pub fn parse(s: &str) -> Option<Compression> {
        match s {
            "uncompressed" | "none" => Some(Compression::Uncompressed),
            "gzip" => Some(Compression::Gzip),
            "zstd" => Some(Compression::Zstd),
            _ => None,
        }
    }
}

/// A streaming compressor; call [`Compressor::finish`] to flush the trailer and get `W` back.
pub enum Compressor<W: Write> {
    None(W),
    Gzip(GzEncoder<W>),
    Zstd(zstd::Encoder<'static, W>),
}

impl<W: Write> Compressor<W> {
    pub fn new(
        inner: W,
        compression: Compression,
        level: Option<i32>,
    ) -> io::Result<Compressor<W>> {
        let level = level.unwrap_or(compression.default_level());
        Ok(match compression {
            Compression::Uncompressed => Compressor::None(inner),
            Compression::Gzip => {
                // A fixed header (no mtime, no name, OS byte 255) keeps the bytes reproducible.
                let encoder = flate2::GzBuilder::new()
                    .operating_system(255)
                    .write(inner, flate2::Compression::new(level.clamp(0, 9) as u32));
                Compressor::Gzip(encoder)
            }
            Compression::Zstd => {
                let mut encoder = zstd::Encoder::new(inner, level)?;
                // zstd's multithreaded mode emits the same frames for any worker count.
                encoder.multithread(2)?;
                Compressor::Zstd(encoder)
            }
        })
    }

    pub fn finish(self) -> io::Result<W> {
        match self {
            Compressor::None(w) => Ok(w),
            Compressor::Gzip(e) => e.finish(),
            Compressor::Zstd(e) => e.finish(),
        }
    }
}

impl<W: Write> Write for Compressor<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Compressor::None(w) => w.write(buf),
            Compressor::Gzip(e) => e.write(buf),
            Compressor::Zstd(e) => e.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Compressor::None(w) => w.flush(),
            Compressor::Gzip(e) => e.flush(),
            Compressor::Zstd(e) => e.flush(),
        }
    }
}

/// Which codec a stream starts with, by magic bytes.
pub fn sniff(head: &[u8]) -> Compression {
    if head.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else {
        Compression::Uncompressed
    }
}

/// A reader that decompresses whatever codec `reader` holds (gzip, zstd or none).
pub fn decompressor<'a, R: Read + 'a>(reader: R) -> io::Result<Box<dyn Read + 'a>> {
    let mut reader = BufReader::with_capacity(256 * 1024, reader);
    let kind = sniff(reader.fill_buf()?);
    Ok(match kind {
        Compression::Uncompressed => Box::new(reader),
        // MultiGzDecoder: pigz-style and concatenated members are valid gzip streams.
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(reader)),
        Compression::Zstd => Box::new(zstd::Decoder::with_buffer(reader)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(c: Compression) -> Vec<u8> {
        let data: Vec<u8> = (0..200_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        let mut w = Compressor::new(Vec::new(), c, None).unwrap();
        w.write_all(&data).unwrap();
        let blob = w.finish().unwrap();
        let mut back = Vec::new();
        decompressor(&blob[..])
            .unwrap()
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, data, "{c:?}");
        blob
    }

    #[test]
    fn every_codec_round_trips_and_is_deterministic() {
        for c in [
            Compression::Uncompressed,
            Compression::Gzip,
            Compression::Zstd,
        ] {
            let a = roundtrip(c);
            assert_eq!(sniff(&a), c);
            assert_eq!(a, roundtrip(c), "{c:?} output must not vary between runs");
        }
    }

    #[test]
    fn truncated_gzip_is_an_error() {
        let mut w = Compressor::new(Vec::new(), Compression::Gzip, None).unwrap();
        w.write_all(&[7u8; 100_000]).unwrap();
        let blob = w.finish().unwrap();
        let mut out = Vec::new();
        assert!(decompressor(&blob[..blob.len() / 2])
            .unwrap()
            .read_to_end(&mut out)
            .is_err());
    }
}
