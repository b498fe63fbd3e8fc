//! One render, on a blocking thread: decode a master from local disk, orient, resize, encode.
//!
//! - The format is sniffed from the bytes (never the name): anything but JPEG, PNG, GIF and WebP is refused
//!   as [`RenderError::NotAnImage`], as is a file that does not decode.
//! - The dimensions are read from the header before any pixel is decoded: a source over the pixel limit is a
//!   [`RenderError::TooLarge`] (decompression bombs cost a header read); the decoder also runs under
//!   `image::Limits` so a lying header cannot allocate past the limit.
//! - An animated GIF or WebP is [`RenderError::Animated`] (answered 404: animations are left alone).
//! - The EXIF orientation is applied (the resize runs on the stored pixels, the small result is turned), the
//!   ICC profile is carried over to JPEG, PNG and WebP output, and nothing else of the source's metadata is
//!   written (the encoders start from bare pixels).
//! - Alpha is kept for PNG, GIF and WebP, and flattened onto white for JPEG.
//! - Resampling is Lanczos3 (`fast_image_resize`, SIMD), alpha-premultiplied.

use std::io::{BufRead, BufReader, Cursor, Seek};
use std::path::Path;
use std::time::Instant;

use fast_image_resize::{ResizeOptions, Resizer};
use image::codecs::gif::GifEncoder;
use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::{CompressionType, FilterType, PngEncoder};
use image::metadata::Orientation;
use image::{
    AnimationDecoder, DynamicImage, ExtendedColorType, ImageDecoder, ImageEncoder, ImageFormat,
    ImageReader, Limits,
};

use super::{Fit, Format, Size};

/// Why a render produced nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    /// The master does not decode as a supported image (422, `not_an_image`).
    #[error("the master is not an image this node can read: {0}")]
    NotAnImage(String),
    /// The master has more than `max_pixels` pixels, or needs more memory than allowed (422, `image_too_large`).
    #[error("the master is too large to decode: {0}")]
    TooLarge(String),
    /// The master is an animated GIF or WebP (404).
    #[error("the master is an animation: animations are not thumbnailed")]
    Animated,
    /// The job's deadline passed (503; nothing stored).
    #[error("the render did not finish within its deadline")]
    Deadline,
    /// The encoder failed (500).
    #[error("encoding failed: {0}")]
    Encode(String),
    /// The master could not be read (500).
    #[error("reading the master: {0}")]
    Io(String),
}

/// What a render is asked to do.
#[derive(Debug, Clone)]
pub struct Job {
    /// The box and how to fill it.
    pub size: Size,
    /// Output format.
    pub format: Format,
    /// JPEG quality, 1-100.
    pub jpeg_quality: u8,
    /// Lossy WebP quality, 1-100.
    pub webp_quality: u8,
    /// Enlarge a source smaller than the box.
    pub upscale: bool,
    /// Largest source, in pixels; larger ones are refused before decoding.
    pub max_pixels: u64,
    /// When the render gives up with [`RenderError::Deadline`].
    pub deadline: Instant,
}

impl Job {
    fn check_deadline(&self) -> Result<(), RenderError> {
        if Instant::now() > self.deadline {
            Err(RenderError::Deadline)
        } else {
            Ok(())
        }
    }
}

/// Render the master at `path`. Blocking.
pub fn render_file(path: &Path, job: &Job) -> Result<Vec<u8>, RenderError> {
    let file = std::fs::File::open(path).map_err(|e| RenderError::Io(e.to_string()))?;
    render(BufReader::new(file), job)
}

/// Render the encoded image read from `source`. Blocking.
pub fn render<R: BufRead + Seek>(mut source: R, job: &Job) -> Result<Vec<u8>, RenderError> {
    let mut reader = ImageReader::new(&mut source)
        .with_guessed_format()
        .map_err(|e| RenderError::Io(e.to_string()))?;
    let format = match reader.format() {
        Some(f @ (ImageFormat::Jpeg | ImageFormat::Png | ImageFormat::Gif | ImageFormat::WebP)) => {
            f
        }
        Some(f) => {
            return Err(RenderError::NotAnImage(format!(
                "{f:?} masters are not thumbnailed"
            )))
        }
        None => return Err(RenderError::NotAnImage("unknown format".into())),
    };
    let mut limits = Limits::default();
    // RGBA8 of the largest allowed image, plus the decoders' working space.
    limits.max_alloc = Some(job.max_pixels.saturating_mul(4).saturating_add(64 << 20));
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(decode_error)?;
    let (w, h) = decoder.dimensions();
    let pixels = u64::from(w) * u64::from(h);
    if pixels > job.max_pixels {
        return Err(RenderError::TooLarge(format!(
            "{w}x{h} is {pixels} pixels, over the limit of {}",
            job.max_pixels
        )));
    }
    if pixels == 0 {
        return Err(RenderError::NotAnImage("the image is empty".into()));
    }
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let icc = decoder.icc_profile().ok().flatten();
    let img = DynamicImage::from_decoder(decoder).map_err(decode_error)?;
    if matches!(format, ImageFormat::Gif | ImageFormat::WebP) && is_animated(&mut source, format)? {
        return Err(RenderError::Animated);
    }
    job.check_deadline()?;
    let small = resize(img, orientation, job)?;
    job.check_deadline()?;
    encode(small, icc, job)
}

/// A decoder's refusal: over a limit (its header alone can say so), or not a readable image.
fn decode_error(e: image::ImageError) -> RenderError {
    match e {
        image::ImageError::Limits(l) => RenderError::TooLarge(l.to_string()),
        e => RenderError::NotAnImage(e.to_string()),
    }
}

/// More than one frame: an animation.
fn is_animated<R: BufRead + Seek>(
    source: &mut R,
    format: ImageFormat,
) -> Result<bool, RenderError> {
    source
        .rewind()
        .map_err(|e| RenderError::Io(e.to_string()))?;
    let frames = match format {
        ImageFormat::Gif => image::codecs::gif::GifDecoder::new(source)
            .map(|d| d.into_frames().take(2).count())
            .unwrap_or(1),
        ImageFormat::WebP => {
            let d = image::codecs::webp::WebPDecoder::new(source)
                .map_err(|e| RenderError::NotAnImage(e.to_string()))?;
            if d.has_animation() {
                2
            } else {
                1
            }
        }
        _ => 1,
    };
    Ok(frames > 1)
}

/// Whether the orientation turns the image a quarter (width and height swap).
fn swaps(o: Orientation) -> bool {
    matches!(
        o,
        Orientation::Rotate90
            | Orientation::Rotate270
            | Orientation::Rotate90FlipH
            | Orientation::Rotate270FlipH
    )
}

/// Output dimensions for a source of `sw` x `sh` (as displayed) in the box `size`.
pub fn target_dims(sw: u32, sh: u32, size: Size, upscale: bool) -> (u32, u32) {
    let (sw_f, sh_f) = (f64::from(sw), f64::from(sh));
    let (bw, bh) = (f64::from(size.width), f64::from(size.height));
    let crop = size.fit == Fit::Crop && size.width > 0 && size.height > 0;
    let scale_of = |s: f64| if upscale { s } else { s.min(1.0) };
    let round = |v: f64| (v.round() as u32).max(1);
    if crop {
        // The box itself; without upscaling a source smaller than the box gives the largest box of the same
        // aspect ratio it covers.
        let k = if upscale {
            1.0
        } else {
            (sw_f / bw).min(sh_f / bh).min(1.0)
        };
        return (round(bw * k), round(bh * k));
    }
    let scale = match (size.width, size.height) {
        (0, 0) => 1.0,
        (0, _) => bh / sh_f,
        (_, 0) => bw / sw_f,
        _ => (bw / sw_f).min(bh / sh_f),
    };
    let scale = scale_of(scale);
    (round(sw_f * scale), round(sh_f * scale))
}

/// Resize (and for crop-to-fill, centre-crop) the stored pixels, then apply the orientation to the result.
fn resize(
    img: DynamicImage,
    orientation: Orientation,
    job: &Job,
) -> Result<DynamicImage, RenderError> {
    let alpha = img.color().has_alpha() && job.format != Format::Jpeg;
    let src = if alpha {
        DynamicImage::ImageRgba8(img.into_rgba8())
    } else if img.color().has_alpha() {
        DynamicImage::ImageRgb8(flatten_on_white(img))
    } else {
        DynamicImage::ImageRgb8(img.into_rgb8())
    };
    let (raw_w, raw_h) = (src.width(), src.height());
    let turned = swaps(orientation);
    let (shown_w, shown_h) = if turned {
        (raw_h, raw_w)
    } else {
        (raw_w, raw_h)
    };
    let (tw, th) = target_dims(shown_w, shown_h, job.size, job.upscale);
    let (dw, dh) = if turned { (th, tw) } else { (tw, th) };
    let mut out = if (dw, dh) == (raw_w, raw_h) {
        src
    } else {
        let mut dst = if alpha {
            DynamicImage::new_rgba8(dw, dh)
        } else {
            DynamicImage::new_rgb8(dw, dh)
        };
        // Centre cropping is the same whichever way the image is turned.
        let options = ResizeOptions::new().fit_into_destination(Some((0.5, 0.5)));
        Resizer::new()
            .resize(&src, &mut dst, &options)
            .map_err(|e| RenderError::Encode(e.to_string()))?;
        dst
    };
    out.apply_orientation(orientation);
    Ok(out)
}

/// Composite an image with alpha over white (for outputs without alpha).
fn flatten_on_white(img: DynamicImage) -> image::RgbImage {
    let rgba = img.into_rgba8();
    let (w, h) = rgba.dimensions();
    let mut out = image::RgbImage::new(w, h);
    for (o, p) in out.pixels_mut().zip(rgba.pixels()) {
        let a = u32::from(p[3]);
        for c in 0..3 {
            let v = (u32::from(p[c]) * a + 255 * (255 - a) + 127) / 255;
            o[c] = u8::try_from(v).unwrap_or(u8::MAX);
        }
    }
    out
}

fn encode(img: DynamicImage, icc: Option<Vec<u8>>, job: &Job) -> Result<Vec<u8>, RenderError> {
    let (w, h) = (img.width(), img.height());
    let color = if img.color().has_alpha() {
        ExtendedColorType::Rgba8
    } else {
        ExtendedColorType::Rgb8
    };
    let err = |e: image::ImageError| RenderError::Encode(e.to_string());
    let mut out = Cursor::new(Vec::new());
    match job.format {
        Format::Jpeg => {
            let mut enc = JpegEncoder::new_with_quality(&mut out, job.jpeg_quality.clamp(1, 100));
            if let Some(icc) = icc {
                let _ = enc.set_icc_profile(icc);
            }
            enc.write_image(img.as_bytes(), w, h, color).map_err(err)?;
        }
        Format::Png => {
            let mut enc =
                PngEncoder::new_with_quality(&mut out, CompressionType::Fast, FilterType::Adaptive);
            if let Some(icc) = icc {
                let _ = enc.set_icc_profile(icc);
            }
            enc.write_image(img.as_bytes(), w, h, color).map_err(err)?;
        }
        Format::Gif => {
            let rgba = img.into_rgba8();
            let mut enc = GifEncoder::new_with_speed(&mut out, 10);
            enc.encode(rgba.as_raw(), w, h, ExtendedColorType::Rgba8)
                .map_err(err)?;
        }
        Format::Webp => {
            let layout = if img.color().has_alpha() {
                webp::PixelLayout::Rgba
            } else {
                webp::PixelLayout::Rgb
            };
            let encoded = webp::Encoder::new(img.as_bytes(), layout, w, h)
                .encode_simple(false, f32::from(job.webp_quality.min(100)))
                .map_err(|e| RenderError::Encode(format!("libwebp: {e:?}")))?;
            let bytes = encoded.to_vec();
            return Ok(match icc {
                Some(icc) => super::webp_icc::with_icc(&bytes, &icc, w, h).unwrap_or(bytes),
                None => bytes,
            });
        }
    }
    Ok(out.into_inner())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use image::codecs::gif::GifEncoder;
    use image::{Delay, Frame, ImageDecoder, RgbaImage};

    use super::*;

    fn job(format: Format) -> Job {
        Job {
            size: Size {
                width: 50,
                height: 50,
                fit: Fit::Inside,
            },
            format,
            jpeg_quality: 85,
            webp_quality: 80,
            upscale: false,
            max_pixels: 1_000_000,
            deadline: Instant::now() + Duration::from_secs(60),
        }
    }

    /// A stand-in ICC profile: the decoders hand back whatever bytes the file carries.
    const ICC: &[u8] = b"\0\0\x02\x0cfdfs-test-profile-bytes-not-a-real-profile";

    fn png_with_icc() -> Vec<u8> {
        let img = RgbaImage::from_fn(100, 80, |x, _| image::Rgba([200, 10, 10, (x * 2) as u8]));
        let mut out = Cursor::new(Vec::new());
        let mut enc = PngEncoder::new(&mut out);
        enc.set_icc_profile(ICC.to_vec()).unwrap();
        enc.write_image(img.as_raw(), 100, 80, ExtendedColorType::Rgba8)
            .unwrap();
        out.into_inner()
    }

    #[test]
    fn the_colour_profile_is_kept_in_every_output_that_can_hold_one() {
        let src = png_with_icc();
        for (format, image_format) in [
            (Format::Jpeg, ImageFormat::Jpeg),
            (Format::Png, ImageFormat::Png),
            (Format::Webp, ImageFormat::WebP),
        ] {
            let out = render(Cursor::new(&src), &job(format)).unwrap();
            let mut reader = ImageReader::with_format(Cursor::new(&out), image_format)
                .into_decoder()
                .unwrap();
            assert_eq!(reader.dimensions(), (50, 40), "{format:?}");
            assert_eq!(
                reader.icc_profile().unwrap().as_deref(),
                Some(ICC),
                "{format:?}"
            );
            DynamicImage::from_decoder(reader).unwrap();
        }
    }

    #[test]
    fn animations_are_left_alone_and_garbage_is_not_an_image() {
        let mut gif = Vec::new();
        {
            let mut enc = GifEncoder::new(&mut gif);
            for c in [0u8, 255] {
                let frame = RgbaImage::from_pixel(20, 20, image::Rgba([c, c, c, 255]));
                enc.encode_frame(Frame::from_parts(
                    frame,
                    0,
                    0,
                    Delay::from_numer_denom_ms(100, 1),
                ))
                .unwrap();
            }
        }
        assert_eq!(
            render(Cursor::new(&gif), &job(Format::Gif)),
            Err(RenderError::Animated)
        );
        assert!(matches!(
            render(Cursor::new(b"hello, not a picture"), &job(Format::Jpeg)),
            Err(RenderError::NotAnImage(_))
        ));
        // A truncated JPEG: its header reads, its pixels do not.
        let mut jpeg = Cursor::new(Vec::new());
        DynamicImage::new_rgb8(64, 64)
            .write_to(&mut jpeg, ImageFormat::Jpeg)
            .unwrap();
        let jpeg = jpeg.into_inner();
        assert!(render(Cursor::new(&jpeg[..jpeg.len() / 3]), &job(Format::Jpeg)).is_err());
    }
}
