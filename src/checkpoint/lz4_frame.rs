//! Writes a part's body as an LZ4 frame (the format `lz4_flex::frame::FrameDecoder`
//! reads back) of independent blocks, each compressed straight from the caller's buffer
//! and written in one call. `lz4_flex`'s `FrameEncoder` copied every byte into its own
//! block buffer first, and its output went through another buffer on the way to the
//! file: with the compression, most of the part writer's time at a 1 s interval.

use std::io::{self, Write};

use lz4_flex::block::{compress_into, get_maximum_output_size};

/// The most a block holds (the frame's 64 KB block size), less one byte: `lz4_flex`
/// compresses inputs shorter than `u16::MAX` with a hash table half the size.
pub const BLOCK: usize = u16::MAX as usize - 1;

/// The frame header: the magic number; flags: version 01, independent blocks, no
/// checksums (the part's trailer has one over the whole frame), no content size, no
/// dictionary; 64 KB blocks; and the header's checksum (`xxh32` of the two bytes
/// before it, its second byte), as `FrameEncoder` writes them
/// (`the_header_is_lz4_flexs`).
const HEADER: [u8; 7] = [0x04, 0x22, 0x4d, 0x18, 0x60, 0x40, 0x82];

/// A block stored as is, where compressing did not make it smaller.
const UNCOMPRESSED: u32 = 1 << 31;

pub struct Lz4Frame<'a> {
    out: &'a mut dyn Write,
    /// A block's size word, then its compressed bytes.
    block: Vec<u8>,
}

impl<'a> Lz4Frame<'a> {
    /// Starts a frame on `out`.
    pub fn start(out: &'a mut dyn Write) -> io::Result<Self> {
        out.write_all(&HEADER)?;
        Ok(Lz4Frame {
            out,
            block: vec![0; 4 + get_maximum_output_size(BLOCK)],
        })
    }

    /// Writes the whole blocks at the front of `data`; returns the bytes they took
    /// (the rest is less than a block, for the next call or `finish`).
    pub fn whole_blocks(&mut self, data: &[u8]) -> io::Result<usize> {
        let whole = data.len() - data.len() % BLOCK;
        for block in data[..whole].chunks_exact(BLOCK) {
            self.write_block(block)?;
        }
        Ok(whole)
    }

    /// Writes `rest` as the last blocks, and the end mark.
    pub fn finish(mut self, rest: &[u8]) -> io::Result<()> {
        for block in rest.chunks(BLOCK) {
            self.write_block(block)?;
        }
        self.out.write_all(&0u32.to_le_bytes())
    }

    fn write_block(&mut self, src: &[u8]) -> io::Result<()> {
        let n = compress_into(src, &mut self.block[4..]).map_err(io::Error::other)?;
        if n < src.len() {
            self.block[..4].copy_from_slice(&(n as u32).to_le_bytes());
            return self.out.write_all(&self.block[..4 + n]);
        }
        self.out
            .write_all(&(src.len() as u32 | UNCOMPRESSED).to_le_bytes())?;
        self.out.write_all(src)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn framed(parts: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut frame = Lz4Frame::start(&mut out).unwrap();
        let mut pending = Vec::new();
        for part in parts {
            pending.extend_from_slice(part);
            let used = frame.whole_blocks(&pending).unwrap();
            pending.drain(..used);
        }
        frame.finish(&pending).unwrap();
        out
    }

    fn unframed(frame: &[u8]) -> Vec<u8> {
        let mut back = Vec::new();
        lz4_flex::frame::FrameDecoder::new(frame)
            .read_to_end(&mut back)
            .unwrap();
        back
    }

    #[test]
    fn the_header_is_lz4_flexs() {
        let info = lz4_flex::frame::FrameInfo::new()
            .block_size(lz4_flex::frame::BlockSize::Max64KB)
            .block_mode(lz4_flex::frame::BlockMode::Independent);
        let mut e = lz4_flex::frame::FrameEncoder::with_frame_info(info, Vec::new());
        e.write_all(b"x").unwrap();
        assert_eq!(e.finish().unwrap()[..7], HEADER);
    }

    /// Records of any size, in any number of calls, come back as they went in: blocks
    /// that compress, blocks that do not (stored as they are), a last short block, and
    /// no block at all.
    #[test]
    fn lz4_flexs_decoder_reads_back_what_went_in() {
        let text: Vec<u8> = (0..300_000u32)
            .flat_map(|i| format!("user_{:07} ", i % 500).into_bytes())
            .collect();
        let mut noise = Vec::with_capacity(200_000);
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            noise.push(x as u8);
        }
        let cases: [&[&[u8]]; 5] = [
            &[],
            &[b"short"],
            &[&text[..BLOCK]],
            &[&text[..1000], &noise, &text[..70_000], &text],
            &[&noise[..BLOCK + 1], &noise[..3]],
        ];
        for parts in cases {
            assert_eq!(unframed(&framed(parts)), parts.concat());
        }
        assert!(
            framed(&[&text]).len() < text.len() / 4,
            "text is compressed"
        );
        let blocks = noise.len().div_ceil(BLOCK);
        assert_eq!(
            framed(&[&noise]).len(),
            HEADER.len() + 4 * blocks + noise.len() + 4,
            "noise is stored as it is"
        );
    }
}
