//! The measurement behind the thumbnail libraries (docs/PERFORMANCE.md, "Thumbnails"): a 12 MP photo-like JPEG
//! decoded, resized into 300x300 and encoded by each candidate, best and median of a few runs, one thread.
//!
//! ```sh
//! cargo run --release -p fdfs-storage --features examples --example thumbnail_libs                  # the table
//! cargo run --release -p fdfs-storage --features examples --example thumbnail_libs -- write p.jpg   # only write the 12 MP JPEG
//! ```

use std::io::Cursor;
use std::time::{Duration, Instant};

use fast_image_resize::{ResizeOptions, Resizer};
use fdfs_storage::thumbnail::render::{render, Job};
use fdfs_storage::thumbnail::{Fit, Format, Size};
use image::codecs::jpeg::JpegEncoder;
use image::imageops::FilterType;
use image::{DynamicImage, ImageFormat, RgbImage};

const RUNS: usize = 5;

/// A 4000x3000 picture with gradients, edges and sensor-like noise (JPEG size close to a camera's at q90).
fn photo() -> Vec<u8> {
    let (w, h) = (4000u32, 3000u32);
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let img = RgbImage::from_fn(w, h, |x, y| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let n = (seed % 24) as i32 - 12;
        let band = if (x / 250 + y / 250) % 2 == 0 { 40 } else { 0 };
        let c = |v: u32| (v as i32 + n + band).clamp(0, 255) as u8;
        image::Rgb([
            c(x * 200 / w),
            c(y * 200 / h),
            c((x + y) * 100 / (w + h) + 60),
        ])
    });
    let mut out = Cursor::new(Vec::new());
    JpegEncoder::new_with_quality(&mut out, 90)
        .encode_image(&img)
        .expect("encode");
    out.into_inner()
}

fn time<T>(label: &str, mut f: impl FnMut() -> T) -> T {
    let mut times = Vec::with_capacity(RUNS);
    let mut last = None;
    for _ in 0..RUNS {
        let t = Instant::now();
        last = Some(f());
        times.push(t.elapsed());
    }
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "| {label:<52} | {:>8.1} | {:>8.1} |",
        ms(times[0]),
        ms(times[RUNS / 2])
    );
    last.expect("at least one run")
}

fn main() {
    let jpeg = photo();
    if let Some(path) = std::env::args()
        .nth(2)
        .filter(|_| std::env::args().nth(1).as_deref() == Some("write"))
    {
        std::fs::write(&path, &jpeg).expect("write");
        println!("{path}: 4000x3000 JPEG, {} bytes", jpeg.len());
        return;
    }
    println!(
        "12 MP JPEG (4000x3000, {} KiB) -> 300x225, {RUNS} runs, ms",
        jpeg.len() / 1024
    );
    println!("| {:<52} | {:>8} | {:>8} |", "step", "best", "median");
    println!("|{:-<54}|{:->10}|{:->10}|", "", "", "");
    let img = time("decode: image 0.25 (zune-jpeg)", || {
        image::load_from_memory_with_format(&jpeg, ImageFormat::Jpeg).expect("decode")
    });
    let rgb = DynamicImage::ImageRgb8(img.to_rgb8());
    time("resize: image::imageops::resize Lanczos3", || {
        image::imageops::resize(&rgb.to_rgb8(), 300, 225, FilterType::Lanczos3)
    });
    time("resize: image::imageops::resize Triangle", || {
        image::imageops::resize(&rgb.to_rgb8(), 300, 225, FilterType::Triangle)
    });
    time("resize: image::imageops::thumbnail (box)", || {
        image::imageops::thumbnail(&rgb.to_rgb8(), 300, 225)
    });
    let small = time("resize: fast_image_resize 6 Lanczos3 (SIMD)", || {
        let mut dst = DynamicImage::new_rgb8(300, 225);
        Resizer::new()
            .resize(&rgb, &mut dst, &ResizeOptions::new())
            .expect("resize");
        dst
    });
    let sized = |label: &str, bytes: Vec<u8>| {
        println!("|   {label:<50} | {:>8} | {:>8} |", bytes.len(), "bytes");
    };
    let out = time("encode: image JPEG q85", || {
        let mut out = Cursor::new(Vec::new());
        JpegEncoder::new_with_quality(&mut out, 85)
            .encode_image(&small)
            .expect("jpeg");
        out.into_inner()
    });
    sized("JPEG q85", out);
    let out = time("encode: image WebP (lossless only)", || {
        let mut out = Cursor::new(Vec::new());
        small.write_to(&mut out, ImageFormat::WebP).expect("webp");
        out.into_inner()
    });
    sized("WebP lossless", out);
    let out = time("encode: webp 0.3 (libwebp) lossy q80", || {
        webp::Encoder::from_rgb(small.as_bytes(), 300, 225)
            .encode_simple(false, 80.0)
            .expect("libwebp")
            .to_vec()
    });
    sized("WebP lossy q80", out);
    for (label, format) in [
        ("whole render (as served): JPEG", Format::Jpeg),
        ("whole render (as served): WebP", Format::Webp),
    ] {
        time(label, || {
            let job = Job {
                size: Size {
                    width: 300,
                    height: 300,
                    fit: Fit::Inside,
                },
                format,
                jpeg_quality: 85,
                webp_quality: 80,
                upscale: false,
                max_pixels: 50_000_000,
                deadline: Instant::now() + Duration::from_secs(60),
            };
            render(Cursor::new(&jpeg), &job).expect("render")
        });
    }
}
