//! Embedding an ICC profile in a WebP file (libwebp's simple encoder writes none): the RIFF container gets a
//! `VP8X` header with the ICC flag and an `ICCP` chunk before the image data (WebP container specification,
//! "Extended file format").

/// `VP8X` flag: an `ICCP` chunk is present.
const ICC_FLAG: u8 = 0x20;
/// `VP8X` flag: the image has alpha.
const ALPHA_FLAG: u8 = 0x10;

fn chunk(fourcc: &[u8; 4], data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(8 + data.len() + 1);
    out.extend_from_slice(fourcc);
    out.extend_from_slice(&u32::try_from(data.len()).ok()?.to_le_bytes());
    out.extend_from_slice(data);
    if data.len() % 2 == 1 {
        out.push(0);
    }
    Some(out)
}

/// `webp` (a complete WebP file of a `width` x `height` image) with `icc` embedded; `None` when `webp` is not
/// a WebP file this understands.
pub fn with_icc(webp: &[u8], icc: &[u8], width: u32, height: u32) -> Option<Vec<u8>> {
    if webp.len() < 20 || &webp[..4] != b"RIFF" || &webp[8..12] != b"WEBP" {
        return None;
    }
    let body = &webp[12..];
    let first = &body[..4];
    let iccp = chunk(b"ICCP", icc)?;
    let mut chunks = Vec::with_capacity(body.len() + iccp.len() + 18);
    if first == b"VP8X" {
        // Already extended (lossy with alpha): set the flag, put ICCP right after VP8X.
        let vp8x_len = 8 + usize::try_from(u32::from_le_bytes(body[4..8].try_into().ok()?)).ok()?;
        if body.len() < vp8x_len || vp8x_len < 9 {
            return None;
        }
        let mut vp8x = body[..vp8x_len].to_vec();
        vp8x[8] |= ICC_FLAG;
        chunks.extend_from_slice(&vp8x);
        chunks.extend_from_slice(&iccp);
        chunks.extend_from_slice(&body[vp8x_len..]);
    } else if first == b"VP8 " || first == b"VP8L" {
        let (w, h) = (width.checked_sub(1)?, height.checked_sub(1)?);
        if w >= 1 << 24 || h >= 1 << 24 {
            return None;
        }
        let mut data = [0u8; 10];
        // A lossless bitstream says whether it uses alpha in its header (bit 28 after the signature byte).
        let alpha = first == b"VP8L" && body.len() > 12 && body[12] & 0x10 != 0;
        data[0] = ICC_FLAG | if alpha { ALPHA_FLAG } else { 0 };
        data[4..7].copy_from_slice(&w.to_le_bytes()[..3]);
        data[7..10].copy_from_slice(&h.to_le_bytes()[..3]);
        chunks.extend_from_slice(&chunk(b"VP8X", &data)?);
        chunks.extend_from_slice(&iccp);
        chunks.extend_from_slice(body);
    } else {
        return None;
    }
    let mut out = Vec::with_capacity(12 + chunks.len());
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&u32::try_from(4 + chunks.len()).ok()?.to_le_bytes());
    out.extend_from_slice(b"WEBP");
    out.extend_from_slice(&chunks);
    Some(out)
}
