//! Thumbnails rendered on first read and stored as FastDFS slave files.
//!
//! A GET for a missing slave `<master name>_<W>x<H>[c].<ext>` whose prefix is a configured size
//! ([`crate::Config::thumbnail_sizes`]) and whose master is on this node renders it here: the master is decoded
//! from local disk ([`render`]), and the result is stored through [`crate::write::Writes::upload`] as that
//! slave (durable, replicated to the write quorum, deduplicated, indexed) before the ordinary file path serves
//! it. From then on it is a plain file hit with immutable caching. A size that is not configured is not
//! rendered (the read answers 404), so nobody can make the cluster render arbitrary sizes.
//!
//! - Output format: the master's own (`jpg`/`jpeg`, `png`, `gif`, `webp`) or WebP, each only when listed in
//!   `thumbnail_formats`.
//! - Concurrent requests for one thumbnail share one render (an in-flight table keyed by the slave ID); at most
//!   `thumbnail_max_renders` renders run at once, on the blocking pool; a render that misses its deadline
//!   (waiting for a slot included) answers 503 and stores nothing.
//! - Refusals (non-image master, over the pixel limit) answer 422 with a JSON error and store nothing; an
//!   animated master answers 404 (animations are left alone).
//! - Metrics: `fdfs_thumbnail_renders_total{format}` (renders that ran), `fdfs_thumbnail_refused_total{reason}`,
//!   `fdfs_thumbnail_render_seconds` (histogram).

pub mod render;
mod webp_icc;

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fdfs_common::wire::Metadata;
use fdfs_common::FileId;
use futures_util::future::{BoxFuture, FutureExt, Shared};
use serde::Deserialize;
use tokio::sync::Semaphore;

use crate::error::{Result, StorageError};
use crate::store::NewFile;
use crate::AppState;
use render::{Job, RenderError};

/// Metadata key marking a slave as rendered here (its value is the size): deleting the master deletes such
/// slaves with it, while uploaded slaves stay (as in FastDFS) unless the delete asks for all slaves.
pub const RENDERED_META_KEY: &str = "fdfs_rendered_thumbnail";

/// Whether a slave's metadata marks it as a rendered thumbnail.
pub fn is_rendered(meta: Option<&Metadata>) -> bool {
    meta.is_some_and(|m| m.contains_key(RENDERED_META_KEY))
}

/// Request extension: the thumbnail was just ensured, serve what is on disk (never render twice in a request).
#[derive(Debug, Clone, Copy)]
pub struct Rendered;

/// How a thumbnail fills its box.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Fit {
    /// Scaled to fit inside the box, aspect ratio kept (one side may be shorter).
    #[default]
    Inside,
    /// Scaled to cover the box and centre-cropped to it.
    Crop,
}

/// One configured size: `WxH` (fit by `thumbnail_fit`), `WxHc` (crop-to-fill); a 0 side keeps the ratio.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size {
    /// Box width in pixels; 0: follows the height, keeping the ratio.
    pub width: u32,
    /// Box height in pixels; 0: follows the width, keeping the ratio.
    pub height: u32,
    /// How the image fills the box.
    pub fit: Fit,
}

/// The longest side a configured size may ask for.
pub const MAX_SIDE: u32 = 8192;

/// A size as written in the config or a request: `WxH` with an optional `c` (crop) suffix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SizeSpec {
    /// `W`, in pixels (0: keep the ratio).
    pub width: u32,
    /// `H`, in pixels (0: keep the ratio).
    pub height: u32,
    /// The `c` suffix: crop to fill (both sides then non-zero).
    pub crop: bool,
}

impl FromStr for SizeSpec {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let s = s.trim();
        let bad = || format!("invalid thumbnail size {s:?}: expected WxH or WxHc, e.g. 300x300");
        let (body, crop) = match s.strip_suffix('c') {
            Some(b) => (b, true),
            None => (s, false),
        };
        let (w, h) = body.split_once('x').ok_or_else(bad)?;
        let num = |v: &str| {
            if v.is_empty() || v.len() > 5 || !v.bytes().all(|b| b.is_ascii_digit()) {
                None
            } else {
                v.parse::<u32>().ok()
            }
        };
        let (width, height) = (num(w).ok_or_else(bad)?, num(h).ok_or_else(bad)?);
        if (width == 0 && height == 0) || width > MAX_SIDE || height > MAX_SIDE {
            return Err(bad());
        }
        if crop && (width == 0 || height == 0) {
            return Err(format!(
                "invalid thumbnail size {s:?}: crop needs both sides"
            ));
        }
        Ok(SizeSpec {
            width,
            height,
            crop,
        })
    }
}

impl fmt::Display for SizeSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}x{}", self.width, self.height)?;
        if self.crop {
            f.write_str("c")?;
        }
        Ok(())
    }
}

impl SizeSpec {
    /// The slave prefix of this size: `_WxH` or `_WxHc`.
    pub fn prefix(&self) -> String {
        format!("_{self}")
    }
}

/// An output image format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `jpg` / `jpeg`, at `thumbnail_jpeg_quality`.
    Jpeg,
    /// `png`, lossless.
    Png,
    /// `gif` (still images only: animations are not thumbnailed).
    Gif,
    /// `webp`, lossy at `thumbnail_webp_quality`.
    Webp,
}

impl Format {
    /// The format an extension names (`jpg` and `jpeg` are one).
    pub fn from_ext(ext: &str) -> Option<Format> {
        match ext.to_ascii_lowercase().as_str() {
            "jpg" | "jpeg" => Some(Format::Jpeg),
            "png" => Some(Format::Png),
            "gif" => Some(Format::Gif),
            "webp" => Some(Format::Webp),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Format::Jpeg => "jpeg",
            Format::Png => "png",
            Format::Gif => "gif",
            Format::Webp => "webp",
        }
    }
}

/// Master extensions tried for a slave, by their length (a master name has `6 - len(ext)` random digits, so
/// the slave's digits say how long its master's extension is).
const MASTER_EXTS: [&str; 5] = ["jpg", "png", "gif", "jpeg", "webp"];

/// The settings, checked (from [`crate::Config`]).
#[derive(Debug, Clone)]
pub struct Settings {
    /// Allowed sizes by slave prefix (`_300x300`).
    pub sizes: HashMap<String, Size>,
    /// `thumbnail_jpeg_quality`, 1-100.
    pub jpeg_quality: u8,
    /// `thumbnail_webp_quality`, 1-100.
    pub webp_quality: u8,
    /// `thumbnail_formats`: formats a thumbnail may be rendered as.
    pub formats: Vec<Format>,
    /// `thumbnail_upscale`: enlarge sources smaller than the box.
    pub upscale: bool,
    /// `thumbnail_max_pixels`: largest source rendered (at least 1).
    pub max_pixels: u64,
    /// Renders at once (`thumbnail_max_renders`, 0 resolved to the CPU count).
    pub max_renders: usize,
    /// `thumbnail_deadline_ms`: time a render may take, waiting for a slot included.
    pub deadline: Duration,
}

impl Settings {
    /// Check the thumbnail keys of `config`.
    pub fn from_config(config: &crate::Config) -> anyhow::Result<Settings> {
        let mut sizes = HashMap::new();
        for s in &config.thumbnail_sizes {
            for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                let spec: SizeSpec = part.parse().map_err(anyhow::Error::msg)?;
                let fit = if spec.crop {
                    Fit::Crop
                } else {
                    config.thumbnail_fit
                };
                sizes.insert(
                    spec.prefix(),
                    Size {
                        width: spec.width,
                        height: spec.height,
                        fit,
                    },
                );
            }
        }
        let mut formats = Vec::new();
        for f in &config.thumbnail_formats {
            for part in f.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                formats.push(Format::from_ext(part).ok_or_else(|| {
                    anyhow::anyhow!("unknown thumbnail format {part:?} (jpg, png, gif, webp)")
                })?);
            }
        }
        anyhow::ensure!(
            (1..=100).contains(&config.thumbnail_jpeg_quality)
                && (1..=100).contains(&config.thumbnail_webp_quality),
            "thumbnail qualities are 1 to 100"
        );
        let max_renders = match config.thumbnail_max_renders {
            0 => std::thread::available_parallelism().map_or(2, usize::from),
            n => n,
        };
        Ok(Settings {
            sizes,
            jpeg_quality: config.thumbnail_jpeg_quality,
            webp_quality: config.thumbnail_webp_quality,
            formats,
            upscale: config.thumbnail_upscale,
            max_pixels: config.thumbnail_max_pixels.max(1),
            max_renders,
            deadline: Duration::from_millis(config.thumbnail_deadline_ms.max(1)),
        })
    }
}

/// Outcome of one render shared by every request waiting on it (errors are cloned to each waiter).
type Outcome = std::result::Result<(), RenderFailure>;

/// A cloneable description of a failed render.
#[derive(Debug, Clone)]
pub(crate) enum RenderFailure {
    /// The renderer refused or failed (see [`RenderError`]).
    Refused(RenderError),
    /// Reading the master or storing the thumbnail failed, with the status it would answer.
    Failed { status: u16, message: String },
}

impl From<RenderFailure> for StorageError {
    fn from(e: RenderFailure) -> Self {
        match e {
            RenderFailure::Refused(RenderError::Animated) => StorageError::NotFound(
                "the master is an animation: animations are not thumbnailed".into(),
            ),
            RenderFailure::Refused(e @ RenderError::NotAnImage(_)) => {
                StorageError::Unprocessable("not_an_image", e.to_string())
            }
            RenderFailure::Refused(e @ RenderError::TooLarge(_)) => {
                StorageError::Unprocessable("image_too_large", e.to_string())
            }
            RenderFailure::Refused(e @ RenderError::Deadline) => {
                StorageError::Unavailable(e.to_string())
            }
            RenderFailure::Refused(e) => StorageError::Internal(e.to_string()),
            RenderFailure::Failed { status, message } => match status {
                404 => StorageError::NotFound(message),
                503 => StorageError::Unavailable(message),
                507 => StorageError::InsufficientStorage,
                _ => StorageError::Internal(message),
            },
        }
    }
}

/// The renderer of a node: settings, render slots and the in-flight table.
pub struct Thumbnails {
    /// The checked thumbnail settings.
    pub settings: Settings,
    slots: Arc<Semaphore>,
    inflight: Mutex<HashMap<FileId, Shared<BoxFuture<'static, Outcome>>>>,
}

impl Thumbnails {
    pub(crate) fn new(settings: Settings) -> Thumbnails {
        Thumbnails {
            slots: Arc::new(Semaphore::new(settings.max_renders.max(1))),
            settings,
            inflight: Mutex::new(HashMap::new()),
        }
    }

    /// What to render for `id`: its size and format, when `id` names a configured thumbnail.
    fn wanted(&self, id: &FileId) -> Option<(Size, Format)> {
        let size = *self.settings.sizes.get(id.name.prefix()?)?;
        let format = Format::from_ext(id.name.ext()?)?;
        self.settings
            .formats
            .contains(&format)
            .then_some((size, format))
    }
}

/// The master of slave `id` on this node, if it is here and its format may become `format`.
async fn find_master(node: &AppState, id: &FileId, format: Format) -> Result<Option<FileId>> {
    let digits = id.name.as_str()[fdfs_common::fileid::ENCODED_LEN..]
        .bytes()
        .take_while(u8::is_ascii_digit)
        .count();
    let ext_len = fdfs_common::fileid::MAX_EXT_LEN.saturating_sub(digits);
    let master_part = &id.name.as_str()[..fdfs_common::fileid::ENCODED_LEN + digits];
    for ext in MASTER_EXTS.iter().filter(|e| e.len() == ext_len) {
        let Some(master_format) = Format::from_ext(ext) else {
            continue;
        };
        if master_format != format && format != Format::Webp {
            continue;
        }
        let Ok(name) = format!("{master_part}.{ext}").parse::<fdfs_common::FileName>() else {
            continue;
        };
        let master = FileId { name, ..id.clone() };
        if node.store.exists(&master).await? {
            return Ok(Some(master));
        }
    }
    Ok(None)
}

/// The error for a file that is neither here nor on a peer: a slave naming a thumbnail size (`_WxH[c]` of an
/// image format) this node does not render, of a master that is here, says which sizes it does render instead
/// of a bare "no such file".
pub async fn missing(node: &AppState, id: &FileId) -> StorageError {
    let plain = || StorageError::NotFound(format!("no such file {id}"));
    let Some(prefix) = id.name.prefix().and_then(|p| p.strip_prefix('_')) else {
        return plain();
    };
    let (Ok(_), Some(format)) = (
        prefix.parse::<SizeSpec>(),
        id.name.ext().and_then(Format::from_ext),
    ) else {
        return plain();
    };
    if !matches!(find_master(node, id, format).await, Ok(Some(_))) {
        return plain();
    }
    let settings = &node.thumbnails.settings;
    let mut sizes: Vec<&str> = settings
        .sizes
        .keys()
        .map(|k| k.trim_start_matches('_'))
        .collect();
    sizes.sort_unstable();
    let mut formats: Vec<&str> = settings.formats.iter().map(|f| f.name()).collect();
    formats.sort_unstable();
    StorageError::ThumbnailSizeNotConfigured(if sizes.is_empty() {
        format!("no thumbnail {id}: this node renders no thumbnails (thumbnail_sizes is empty)")
    } else {
        format!(
            "no thumbnail {id}: size {prefix} is not configured; configured sizes: {} (formats: {}); \
             add it to the storage nodes' thumbnail_sizes to serve it",
            sizes.join(", "),
            formats.join(", ")
        )
    })
}

/// Make sure the thumbnail `id` exists here, rendering it when it is a configured size of a master on this
/// node. `Ok(false)`: not a thumbnail this node renders (the caller answers as for any missing file).
pub async fn ensure(node: &AppState, id: &FileId) -> Result<bool> {
    let Some((size, format)) = node.thumbnails.wanted(id) else {
        return Ok(false);
    };
    let Some(master) = find_master(node, id, format).await? else {
        return Ok(false);
    };
    let render = {
        let mut inflight = node
            .thumbnails
            .inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match inflight.get(id) {
            Some(r) => r.clone(),
            None => {
                let task = tokio::spawn(render_and_store(
                    node.clone(),
                    master,
                    id.clone(),
                    size,
                    format,
                ));
                let shared = async move {
                    task.await.unwrap_or_else(|e| {
                        Err(RenderFailure::Failed {
                            status: 500,
                            message: format!("render task failed: {e}"),
                        })
                    })
                }
                .boxed()
                .shared();
                inflight.insert(id.clone(), shared.clone());
                shared
            }
        }
    };
    render.await.map_err(StorageError::from)?;
    Ok(true)
}

/// The leader of one thumbnail: render (bounded, with a deadline) and store; removes its in-flight entry once
/// the outcome is final (stored, or refused) so that later requests find the file on disk.
async fn render_and_store(
    node: AppState,
    master: FileId,
    id: FileId,
    size: Size,
    format: Format,
) -> Outcome {
    let outcome = render_and_store_inner(&node, master, &id, size, format).await;
    node.thumbnails
        .inflight
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&id);
    outcome
}

async fn render_and_store_inner(
    node: &AppState,
    master: FileId,
    id: &FileId,
    size: Size,
    format: Format,
) -> Outcome {
    let failed = |e: StorageError| RenderFailure::Failed {
        status: e.status().as_u16(),
        message: e.to_string(),
    };
    // A request that missed the file just before the previous render finished: nothing to do.
    if node.store.exists(id).await.map_err(failed)? {
        return Ok(());
    }
    let settings = &node.thumbnails.settings;
    let started = Instant::now();
    let deadline = started + settings.deadline;
    let slot = tokio::time::timeout_at(
        deadline.into(),
        node.thumbnails.slots.clone().acquire_owned(),
    )
    .await
    .map_err(|_| refused(RenderError::Deadline))?
    .map_err(|_| refused(RenderError::Deadline))?;
    let path = node.store.path(&master).map_err(failed)?;
    let job = Job {
        size,
        format,
        jpeg_quality: settings.jpeg_quality,
        webp_quality: settings.webp_quality,
        upscale: settings.upscale,
        max_pixels: settings.max_pixels,
        deadline,
    };
    // The slot goes with the blocking work: a render past its deadline still holds it until it stops.
    let blocking = tokio::task::spawn_blocking(move || {
        let out = render::render_file(&path, &job);
        drop(slot);
        out
    });
    metrics::counter!("fdfs_thumbnail_renders_total", "format" => format.name()).increment(1);
    let bytes = match tokio::time::timeout_at(deadline.into(), blocking).await {
        Err(_) => return Err(refused(RenderError::Deadline)),
        Ok(Err(e)) => return Err(failed(e.into())),
        Ok(Ok(Err(e))) => return Err(refused(e)),
        Ok(Ok(Ok(bytes))) => bytes,
    };
    metrics::histogram!("fdfs_thumbnail_render_seconds").record(started.elapsed().as_secs_f64());
    let body = futures_util::stream::once(async move { Ok::<_, Infallible>(Bytes::from(bytes)) });
    let new = NewFile::Slave {
        master,
        id: id.clone(),
    };
    match node
        .writes
        .upload(
            new,
            Metadata::from([(
                RENDERED_META_KEY.to_owned(),
                id.name
                    .prefix()
                    .unwrap_or_default()
                    .trim_start_matches('_')
                    .to_owned(),
            )]),
            body,
            node.max_file_size,
        )
        .await
    {
        Ok((stored, replicas)) => {
            tracing::info!(file_id = %id, size = stored.size, replicas, "thumbnail rendered and stored");
            Ok(())
        }
        // Rendered elsewhere meanwhile (a peer's replica, or a request on another member).
        Err(StorageError::Conflict(_)) => Ok(()),
        // Stored here, replicated later: serve it (it can always be rendered again).
        Err(StorageError::Unavailable(e)) => {
            tracing::warn!(file_id = %id, error = %e, "thumbnail stored below the write quorum");
            Ok(())
        }
        Err(e) => Err(failed(e)),
    }
}

fn refused(e: RenderError) -> RenderFailure {
    let reason = match &e {
        RenderError::NotAnImage(_) => "not_an_image",
        RenderError::TooLarge(_) => "too_large",
        RenderError::Animated => "animated",
        RenderError::Deadline => "deadline",
        RenderError::Encode(_) | RenderError::Io(_) => "error",
    };
    metrics::counter!("fdfs_thumbnail_refused_total", "reason" => reason).increment(1);
    tracing::info!(reason, error = %e, "thumbnail not rendered");
    RenderFailure::Refused(e)
}

#[cfg(test)]
mod tests {
    use super::render::target_dims;
    use super::*;

    fn size(w: u32, h: u32, fit: Fit) -> Size {
        Size {
            width: w,
            height: h,
            fit,
        }
    }

    #[test]
    fn sizes_parse_and_print() {
        let s: SizeSpec = "300x200".parse().unwrap();
        assert_eq!((s.width, s.height, s.crop), (300, 200, false));
        assert_eq!(s.prefix(), "_300x200");
        let c: SizeSpec = " 150x150c ".parse().unwrap();
        assert_eq!(c.prefix(), "_150x150c");
        assert_eq!("800x0".parse::<SizeSpec>().unwrap().height, 0);
        for bad in [
            "0x0", "x1", "1x", "axb", "10x10x", "99999x1", "-1x5", "1 x 2", "800x0c",
        ] {
            assert!(bad.parse::<SizeSpec>().is_err(), "{bad}");
        }
        for prefix in ["_300x200", "_150x150c", "_800x0"] {
            fdfs_common::fileid::validate_prefix(prefix).unwrap();
        }
    }

    #[test]
    fn inside_keeps_the_ratio_and_does_not_upscale() {
        assert_eq!(
            target_dims(4000, 3000, size(300, 300, Fit::Inside), false),
            (300, 225)
        );
        assert_eq!(
            target_dims(3000, 4000, size(300, 300, Fit::Inside), false),
            (225, 300)
        );
        assert_eq!(
            target_dims(4000, 3000, size(800, 0, Fit::Inside), false),
            (800, 600)
        );
        assert_eq!(
            target_dims(4000, 3000, size(0, 150, Fit::Inside), false),
            (200, 150)
        );
        assert_eq!(
            target_dims(100, 50, size(300, 300, Fit::Inside), false),
            (100, 50)
        );
        assert_eq!(
            target_dims(100, 50, size(300, 300, Fit::Inside), true),
            (300, 150)
        );
        assert_eq!(
            target_dims(10000, 1, size(150, 150, Fit::Inside), false),
            (150, 1)
        );
    }

    #[test]
    fn crop_fills_the_box() {
        assert_eq!(
            target_dims(4000, 3000, size(300, 300, Fit::Crop), false),
            (300, 300)
        );
        assert_eq!(
            target_dims(200, 100, size(300, 300, Fit::Crop), false),
            (100, 100)
        );
        assert_eq!(
            target_dims(200, 100, size(300, 300, Fit::Crop), true),
            (300, 300)
        );
    }
}
