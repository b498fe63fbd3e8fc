//! Deterministic pseudo-random content for benchmarks and tests: a seed names a byte sequence that can be
//! generated as a stream (never held in memory whole) and regenerated later to verify a download byte for byte.

use bytes::Bytes;
use futures_util::stream::{self, Stream};

/// An endless byte sequence from a seed (splitmix64 words, little-endian).
#[derive(Debug, Clone)]
pub struct Pattern {
    state: u64,
    /// Bytes of the current word not handed out yet are `word[pos..]`.
    word: [u8; 8],
    pos: usize,
}

impl Pattern {
    /// The sequence named by `seed`, from its start.
    pub fn new(seed: u64) -> Self {
        Pattern {
            state: seed ^ 0x5DEE_CE66_D1CE_4E5B,
            word: [0; 8],
            pos: 8,
        }
    }

    fn next_word(&mut self) -> [u8; 8] {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)).to_le_bytes()
    }

    /// Fill `out` with the next `out.len()` bytes of the sequence.
    pub fn fill(&mut self, out: &mut [u8]) {
        let mut i = 0;
        while self.pos < 8 && i < out.len() {
            out[i] = self.word[self.pos];
            self.pos += 1;
            i += 1;
        }
        let mut chunks = out[i..].chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&self.next_word());
        }
        let tail = chunks.into_remainder();
        if !tail.is_empty() {
            self.word = self.next_word();
            let n = tail.len();
            tail.copy_from_slice(&self.word[..n]);
            self.pos = n;
        }
    }

    /// The first `len` bytes, in memory (for small bodies).
    pub fn bytes(seed: u64, len: usize) -> Bytes {
        let mut v = vec![0; len];
        Pattern::new(seed).fill(&mut v);
        v.into()
    }

    /// The first `len` bytes as a stream of chunks of at most `chunk` bytes.
    pub fn stream(
        seed: u64,
        len: u64,
        chunk: usize,
    ) -> impl Stream<Item = std::io::Result<Bytes>> + Send + 'static {
        let chunk = chunk.max(1) as u64;
        stream::unfold((Pattern::new(seed), len), move |(mut p, left)| async move {
            if left == 0 {
                return None;
            }
            let n = left.min(chunk) as usize;
            let mut buf = vec![0; n];
            p.fill(&mut buf);
            Some((Ok(Bytes::from(buf)), (p, left - n as u64)))
        })
    }

    /// CRC32 of the first `len` bytes, computed in bounded memory.
    pub fn crc32(seed: u64, len: u64) -> u32 {
        let mut p = Pattern::new(seed);
        let mut h = crc32fast::Hasher::new();
        let mut buf = vec![0; 1 << 16];
        let mut left = len;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            p.fill(&mut buf[..n]);
            h.update(&buf[..n]);
            left -= n as u64;
        }
        h.finalize()
    }
}

/// Checks that a stream of chunks is exactly the first `len` bytes of a pattern.
#[derive(Debug)]
pub struct Verifier {
    pattern: Pattern,
    expected_len: u64,
    seen: u64,
    scratch: Vec<u8>,
    mismatch: Option<u64>,
}

impl Verifier {
    /// Expect exactly the first `expected_len` bytes of `seed`'s pattern.
    pub fn new(seed: u64, expected_len: u64) -> Self {
        Verifier {
            pattern: Pattern::new(seed),
            expected_len,
            seen: 0,
            scratch: Vec::new(),
            mismatch: None,
        }
    }

    /// Feed the next received chunk.
    pub fn update(&mut self, chunk: &[u8]) {
        if self.mismatch.is_none() {
            self.scratch.resize(chunk.len(), 0);
            self.pattern.fill(&mut self.scratch);
            if let Some(i) = self.scratch.iter().zip(chunk).position(|(a, b)| a != b) {
                self.mismatch = Some(self.seen + i as u64);
            }
        }
        self.seen += chunk.len() as u64;
    }

    /// `Ok(())` when every byte matched and the length is right, else a description of the first difference.
    pub fn finish(self) -> Result<(), String> {
        if let Some(at) = self.mismatch {
            return Err(format!("content differs at byte {at}"));
        }
        if self.seen != self.expected_len {
            return Err(format!(
                "got {} bytes, expected {}",
                self.seen, self.expected_len
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    #[test]
    fn any_chunking_gives_the_same_bytes() {
        let whole = Pattern::bytes(7, 1000);
        let mut p = Pattern::new(7);
        let mut got = Vec::new();
        for n in [1, 3, 8, 13, 0, 64, 5, 906] {
            let mut b = vec![0; n];
            p.fill(&mut b);
            got.extend_from_slice(&b);
        }
        assert_eq!(&got[..], &whole[..]);
        assert_ne!(Pattern::bytes(8, 1000), whole);
        assert_eq!(Pattern::crc32(7, 1000), crc32fast::hash(&whole));
    }

    #[tokio::test]
    async fn stream_and_verifier_agree() {
        let chunks: Vec<Bytes> = Pattern::stream(3, 100_003, 4096)
            .map(Result::unwrap)
            .collect()
            .await;
        let mut v = Verifier::new(3, 100_003);
        for c in &chunks {
            v.update(c);
        }
        assert_eq!(v.finish(), Ok(()));

        let mut v = Verifier::new(3, 100_003);
        let mut bad = chunks[1].to_vec();
        bad[10] ^= 1;
        v.update(&chunks[0]);
        v.update(&bad);
        assert_eq!(
            v.finish(),
            Err(format!("content differs at byte {}", 4096 + 10))
        );
    }
}
