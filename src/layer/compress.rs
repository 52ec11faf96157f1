//! Blob codecs: gzip, zstd or none, chosen by media type for writing and by magic bytes for
//! reading. Output bytes depend only on the input and the level (reproducible images).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::sync::mpsc::{channel, Receiver, Sender};

use bytes::Bytes;
use gzp::deflate::Gzip;
use gzp::par::compress::{ParCompress, ParCompressBuilder};
use gzp::{FormatSpec, GzpError, ZWriter};

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
    Gzip(ParGzip<W>),
    Zstd(zstd::Encoder<'static, W>),
}

/// Threads deflating gzip blocks. Two: the machines rbuild targets are small, and the tar
/// producer needs a core too.
const GZIP_THREADS: usize = 2;

/// pigz-style parallel gzip (gzp, pure-Rust deflate): one gzip member whose 128 KiB blocks
/// are deflated independently on [`GZIP_THREADS`] threads (gzp primes blocks with a
/// dictionary only with its zlib backends), blocks that deflate cannot shrink stored as they
/// are ([`StoreIncompressible`]). Block boundaries depend only on the input, so the bytes
/// are the same for any thread count and write pattern. gzp's writer must be `Send +
/// 'static` and ours (a store blob, an output file) need not be: its output comes back over
/// a channel and is written to `inner` on the caller's thread.
pub struct ParGzip<W: Write> {
    par: ParCompress<'static, StoreIncompressible, ChanWriter>,
    rx: Receiver<Vec<u8>>,
    inner: W,
}

/// gzp's output end: hands compressed bytes to [`ParGzip`].
struct ChanWriter(Sender<Vec<u8>>);

impl Write for ChanWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0
            .send(buf.to_vec())
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "gzip output dropped"))?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<W: Write> ParGzip<W> {
    fn new(inner: W, level: u32) -> ParGzip<W> {
        let (tx, rx) = channel();
        let par = ParCompressBuilder::<StoreIncompressible>::new()
            .num_threads(GZIP_THREADS)
            .expect("GZIP_THREADS is not zero")
            .compression_level(gzp::Compression::new(level))
            .from_writer(ChanWriter(tx));
        ParGzip { par, rx, inner }
    }

    /// Write whatever compressed output is ready. The backlog stays small: gzp's queues are
    /// bounded (2 blocks per thread), so compressed data arrives only as fast as input does.
    fn drain(&mut self) -> io::Result<()> {
        while let Ok(chunk) = self.rx.try_recv() {
            self.inner.write_all(&chunk)?;
        }
        Ok(())
    }

    fn finish(mut self) -> io::Result<W> {
        let chan = self.par.finish().map_err(gzp_error)?;
        // gzp's writer thread has ended; dropping its end lets the loop below terminate.
        drop(chan);
        for chunk in self.rx.iter() {
            self.inner.write_all(&chunk)?;
        }
        Ok(self.inner)
    }
}

/// gzp's gzip format, except for blocks whose bytes are spread too evenly for deflate to
/// shrink them: those are written as deflate stored blocks without running the deflater.
/// Already-compressed files (archives, images, wheels) and random data otherwise cost a
/// deflate pass of ~90 MB/s per thread and come out no smaller; counting the block's bytes
/// runs at several GB/s. The test is integer arithmetic on the block's bytes only, so a
/// block becomes the same bytes on every machine (reproducible blobs).
#[derive(Clone, Copy, Debug)]
pub struct StoreIncompressible(Gzip);

/// Blocks shorter than this are always deflated (gzp's last block, tiny layers).
const TESTED_BLOCK: usize = 16 * 1024;
/// The deflate stored block's largest payload.
const STORED_MAX: usize = 0xffff;

impl StoreIncompressible {
    /// Whether coding the block's bytes could save at most ~1/64: its collision entropy
    /// -log2(sum p_i^2), a lower bound of the Shannon entropy that Huffman coding
    /// approaches, is at least 7.875 bits per byte (2^7.875 ~ 234.75). Repeats within
    /// deflate's 32 KiB window (a small compressed file stored twice in a row) are not
    /// looked for: such a block is stored at its size.
    fn looks_incompressible(block: &[u8]) -> bool {
        if block.len() < TESTED_BLOCK {
            return false;
        }
        let n = block.len() as u64;
        // Four tables so that runs of one byte value do not serialize on one counter.
        let mut counts = [[0u32; 256]; 4];
        for part in block.chunks(TESTED_BLOCK) {
            let mut quads = part.chunks_exact(4);
            for q in &mut quads {
                counts[0][q[0] as usize] += 1;
                counts[1][q[1] as usize] += 1;
                counts[2][q[2] as usize] += 1;
                counts[3][q[3] as usize] += 1;
            }
            for &b in quads.remainder() {
                counts[0][b as usize] += 1;
            }
            let collisions: u64 = (0..256)
                .map(|b| {
                    let c: u64 = counts.iter().map(|t| u64::from(t[b])).sum();
                    c * c
                })
                .sum();
            // Collisions only grow as more bytes are counted: a block over the bound part
            // of the way through is over it in the end (most compressible blocks stop here
            // within the first half).
            if collisions * 23_475 > n * n * 100 {
                return false;
            }
        }
        true
    }

    /// `block` (not empty) as deflate stored blocks (RFC 1951 3.2.4), the very last one
    /// marked final.
    fn stored(block: &[u8], is_last: bool) -> Vec<u8> {
        let pieces = block.chunks(STORED_MAX);
        let count = pieces.len();
        let mut out = Vec::with_capacity(block.len() + 5 * count);
        for (i, piece) in pieces.enumerate() {
            let len = piece.len() as u16;
            // BFINAL, BTYPE 00, and padding to the byte boundary.
            out.push(u8::from(is_last && i + 1 == count));
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(&(!len).to_le_bytes());
            out.extend_from_slice(piece);
        }
        out
    }
}

impl FormatSpec for StoreIncompressible {
    type C = <Gzip as FormatSpec>::C;
    type Compressor = <Gzip as FormatSpec>::Compressor;

    fn new() -> Self {
        StoreIncompressible(Gzip::new())
    }

    fn needs_dict(&self) -> bool {
        self.0.needs_dict()
    }

    fn create_compressor(&self, level: gzp::Compression) -> Result<Self::Compressor, GzpError> {
        self.0.create_compressor(level)
    }

    fn encode(
        &self,
        input: &[u8],
        encoder: &mut Self::Compressor,
        level: gzp::Compression,
        dict: Option<&Bytes>,
        is_last: bool,
    ) -> Result<Vec<u8>, GzpError> {
        if level.level() > 0 && Self::looks_incompressible(input) {
            return Ok(Self::stored(input, is_last));
        }
        self.0.encode(input, encoder, level, dict, is_last)
    }

    fn header(&self, level: gzp::Compression) -> Vec<u8> {
        self.0.header(level)
    }

    fn footer(&self, check: &Self::C) -> Vec<u8> {
        self.0.footer(check)
    }
}

fn gzp_error(e: gzp::GzpError) -> io::Error {
    match e {
        gzp::GzpError::Io(e) => e,
        e => io::Error::other(e),
    }
}

impl<W: Write> Write for ParGzip<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.par.write(buf)?;
        self.drain()?;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        // Only what is compressed so far: flushing gzp itself would end a block early and
        // make the bytes depend on when callers flush.
        self.drain()?;
        self.inner.flush()
    }
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
            // gzp writes a fixed header (no mtime, no name, OS byte 255): reproducible.
            Compression::Gzip => Compressor::Gzip(ParGzip::new(inner, level.clamp(0, 9) as u32)),
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

    /// Parallel gzip: the bytes depend on the input only, not on how it is written (block
    /// boundaries are gzp's, not the callers'), and flushes do not change them either.
    #[test]
    fn gzip_bytes_do_not_depend_on_write_sizes_or_flushes() {
        // Several 128 KiB blocks, partly compressible (deflated, not stored), so that both
        // threads get work.
        let data: Vec<u8> = (0..1_500_000u32)
            .map(|i| {
                if i % 3 == 0 {
                    (i % 7) as u8
                } else {
                    (i.wrapping_mul(2_654_435_761) >> 11) as u8
                }
            })
            .collect();
        let whole = {
            let mut w = Compressor::new(Vec::new(), Compression::Gzip, None).unwrap();
            w.write_all(&data).unwrap();
            w.finish().unwrap()
        };
        let pieces = {
            let mut w = Compressor::new(Vec::new(), Compression::Gzip, None).unwrap();
            for (i, chunk) in data.chunks(4093).enumerate() {
                w.write_all(chunk).unwrap();
                if i % 17 == 0 {
                    w.flush().unwrap();
                }
            }
            w.finish().unwrap()
        };
        assert!(
            whole == pieces,
            "gzip output must not depend on write sizes"
        );
        assert!(whole.len() < data.len());
        let mut back = Vec::new();
        flate2::read::MultiGzDecoder::new(&whole[..])
            .read_to_end(&mut back)
            .unwrap();
        assert!(back == data);
        // A fixed header: no mtime, no name, XFL 4 (fastest), OS 255 (reproducible blobs).
        assert_eq!(
            &whole[..10],
            &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 4, 255][..],
            "{:?}",
            &whole[..10]
        );
    }

    /// xorshift: incompressible bytes, the same on every run.
    fn noise(len: usize, mut x: u64) -> Vec<u8> {
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    #[test]
    fn blocks_are_stored_only_when_their_bytes_are_spread_evenly() {
        assert!(StoreIncompressible::looks_incompressible(&noise(
            128 * 1024,
            1
        )));
        // Random files with tar headers between them (~1 % zeros): still stored.
        let mut tarlike = noise(128 * 1024, 2);
        tarlike[..1300].fill(0);
        assert!(StoreIncompressible::looks_incompressible(&tarlike));
        // A tenth of zeros, text, or too short to tell: deflated.
        let mut sparse = noise(128 * 1024, 3);
        sparse[..13_000].fill(0);
        assert!(!StoreIncompressible::looks_incompressible(&sparse));
        let text: Vec<u8> = (0..128 * 1024)
            .map(|i: u32| b"the quick brown fox jumps over the lazy dog "[(i % 44) as usize])
            .collect();
        assert!(!StoreIncompressible::looks_incompressible(&text));
        assert!(!StoreIncompressible::looks_incompressible(&noise(
            8 * 1024,
            4
        )));
    }

    /// Random blocks become stored blocks (no deflate pass, no growth beyond their
    /// headers), compressible ones are still deflated, the last one ends the stream, and the
    /// bytes still do not depend on how they were written.
    #[test]
    fn incompressible_blocks_are_stored_and_round_trip() {
        let mut data = noise(3 * 128 * 1024, 5);
        data.extend(std::iter::repeat_n(b"layer ".as_slice(), 40_000).flatten());
        data.extend(noise(20_000, 6));
        let gz = |sizes: usize| {
            let mut w = Compressor::new(Vec::new(), Compression::Gzip, None).unwrap();
            for chunk in data.chunks(sizes) {
                w.write_all(chunk).unwrap();
            }
            w.finish().unwrap()
        };
        let blob = gz(1 << 20);
        assert!(blob == gz(4093), "bytes must not depend on write sizes");
        // After the 10-byte header: a stored block (BFINAL 0, BTYPE 00) of 65535 bytes.
        assert_eq!(&blob[10..15], &[0, 0xff, 0xff, 0, 0]);
        let random = 3 * 128 * 1024 + 20_000;
        assert!(
            blob.len() < random + 1_000 + 240_000 / 50,
            "{} bytes for {random} random and 240000 compressible",
            blob.len()
        );
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(&blob[..])
            .read_to_end(&mut back)
            .unwrap();
        assert!(back == data);
        // GNU gzip, a decoder that is not ours, agrees (it checks the CRC and length too).
        let gzip = std::process::Command::new("gzip").arg("--version").output();
        if crate::layer::testutil::require(gzip.is_ok(), "gzip") {
            let mut child = std::process::Command::new("gzip")
                .arg("-dc")
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            let mut stdin = child.stdin.take().unwrap();
            let feed = std::thread::spawn(move || stdin.write_all(&blob));
            let out = child.wait_with_output().unwrap();
            feed.join().unwrap().unwrap();
            assert!(out.status.success());
            assert!(out.stdout == data);
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
