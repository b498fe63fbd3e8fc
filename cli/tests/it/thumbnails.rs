//! Issue "thumbnails on first read, stored as FastDFS slave files", against real processes (`fdfs tracker|
//! storage|gateway`, see `fdfs_testkit::cluster`): a first GET of `<master>_<W>x<H>.<ext>` renders it once (concurrent
//! requests included) and stores it on every member; later reads are plain hits; the picture is turned by its
//! EXIF orientation, keeps PNG alpha, decodes as WebP; unknown sizes, decompression bombs and non-images are
//! refused and leave nothing on disk; uploads with `thumbnails=` answer the slaves' IDs (gateway and CLI).

use std::io::Cursor;
use std::path::PathBuf;
use std::time::Duration;

use fdfs_common::FileId;
use fdfs_testkit::{
    error_of, eventually, metric_sum, metrics, node, Cluster, ClusterSpec, Node, RequestExt,
};
use image::{DynamicImage, GenericImageView, ImageFormat, Rgb, RgbImage, Rgba, RgbaImage};
use reqwest::{header, StatusCode};
use serde_json::Value;

/// One group of two members (write quorum 2: a stored thumbnail is on both before it is served).
async fn start() -> Cluster {
    Cluster::start(ClusterSpec::group(2).storage(&[
        "--thumbnail-sizes",
        "150x150,300x300,100x100c,800x0",
        "--thumbnail-max-pixels",
        "4000000",
    ]))
    .await
}

fn jpeg(img: &DynamicImage) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, ImageFormat::Jpeg).unwrap();
    out.into_inner()
}

fn png(img: &DynamicImage) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, ImageFormat::Png).unwrap();
    out.into_inner()
}

/// A `w` x `h` photo-like gradient (so JPEG sizes are realistic).
fn photo(w: u32, h: u32) -> DynamicImage {
    DynamicImage::ImageRgb8(RgbImage::from_fn(w, h, |x, y| {
        Rgb([
            (x * 255 / w) as u8,
            (y * 255 / h) as u8,
            ((x + y) % 256) as u8,
        ])
    }))
}

/// A JPEG with an EXIF APP1 segment saying "rotate 90 clockwise to display" (orientation 6).
fn with_exif_orientation_6(jpeg: &[u8]) -> Vec<u8> {
    assert_eq!(&jpeg[..2], [0xFF, 0xD8]);
    // TIFF little endian, one IFD entry: 0x0112 Orientation, SHORT, count 1, value 6.
    let mut tiff = b"II*\0".to_vec();
    tiff.extend_from_slice(&8u32.to_le_bytes());
    tiff.extend_from_slice(&1u16.to_le_bytes());
    tiff.extend_from_slice(&0x0112u16.to_le_bytes());
    tiff.extend_from_slice(&3u16.to_le_bytes());
    tiff.extend_from_slice(&1u32.to_le_bytes());
    tiff.extend_from_slice(&[6, 0, 0, 0]);
    tiff.extend_from_slice(&0u32.to_le_bytes());
    let mut app1 = b"Exif\0\0".to_vec();
    app1.extend_from_slice(&tiff);
    let mut out = jpeg[..2].to_vec();
    out.extend_from_slice(&[0xFF, 0xE1]);
    out.extend_from_slice(&u16::try_from(app1.len() + 2).unwrap().to_be_bytes());
    out.extend_from_slice(&app1);
    out.extend_from_slice(&jpeg[2..]);
    out
}

/// A valid 1x1 PNG whose header claims `w` x `h` pixels (a decompression bomb costs a header read to spot).
fn bomb_png(w: u32, h: u32) -> Vec<u8> {
    let mut bytes = png(&DynamicImage::ImageRgb8(RgbImage::new(1, 1)));
    // IHDR data starts at 16 (8 signature, 4 length, 4 type); its CRC covers type + data (13 bytes).
    bytes[16..20].copy_from_slice(&w.to_be_bytes());
    bytes[20..24].copy_from_slice(&h.to_be_bytes());
    let crc = crc32fast::hash(&bytes[12..29]);
    bytes[29..33].copy_from_slice(&crc.to_be_bytes());
    bytes
}

fn slave(master: &str, prefix: &str, ext: &str) -> FileId {
    let id: FileId = master.parse().unwrap();
    id.slave(prefix, Some(ext)).unwrap()
}

/// Sum of `fdfs_thumbnail_renders_total` over every storage node.
async fn all_renders(c: &Cluster) -> u64 {
    let mut n = 0.0;
    for node in c.all_storage() {
        let text = metrics(&c.http, &node.url()).await;
        n += metric_sum(&text, "fdfs_thumbnail_renders_total");
    }
    n as u64
}

/// The file on `node`'s disk, if any.
fn on_disk(node: &Node, id: &FileId) -> PathBuf {
    node.dir.join(id.relative_path())
}

async fn get(c: &Cluster, node: &Node, id: &FileId) -> reqwest::Response {
    c.http.get(format!("{}/{id}", node.url())).go().await
}

async fn get_image(c: &Cluster, node: &Node, id: &FileId) -> (reqwest::header::HeaderMap, Vec<u8>) {
    let r = get(c, node, id).await;
    let status = r.status();
    let headers = r.headers().clone();
    let body = r.bytes().await.unwrap().to_vec();
    assert_eq!(
        status,
        StatusCode::OK,
        "{id} on {}: {}",
        node.name,
        String::from_utf8_lossy(&body)
    );
    (headers, body)
}

/// Upload `body` as `name` through the gateway; its file ID.
async fn upload(c: &Cluster, name: &str, body: Vec<u8>) -> String {
    let up = c.upload(name, body).await;
    up["file_id"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_first_read_renders_once_stores_on_every_member_and_later_reads_are_hits() {
    let c = start().await;
    let (m1, m2) = (&c.storage[0][0], &c.storage[0][1]);
    let master = upload(&c, "photo.jpg", jpeg(&photo(1200, 800))).await;
    let before = all_renders(&c).await;

    // Eight concurrent first requests on one member: one render, every answer the same picture.
    let thumb = slave(&master, "_300x300", "jpg");
    let answers = futures_util::future::join_all((0..8).map(|_| get_image(&c, m1, &thumb))).await;
    let first = &answers[0].1;
    assert!(answers.iter().all(|(_, b)| b == first));
    let (headers, body) = &answers[0];
    assert_eq!(headers[header::CONTENT_TYPE], "image/jpeg");
    assert!(headers[header::CACHE_CONTROL]
        .to_str()
        .unwrap()
        .contains("immutable"));
    let img = image::load_from_memory(body).unwrap();
    assert_eq!(
        img.dimensions(),
        (300, 200),
        "fits inside 300x300, ratio kept"
    );
    assert_eq!(
        all_renders(&c).await,
        before + 1,
        "concurrent first reads render once"
    );

    // Stored as a slave file on both members (the write quorum), with the same bytes.
    for n in [m1, m2] {
        let path = on_disk(n, &thumb);
        let stored = eventually(30, "the thumbnail on every member", || async {
            std::fs::read(&path).ok()
        })
        .await;
        assert_eq!(&stored, body, "{}", n.name);
    }
    // Later reads, on either member, are file hits: no render.
    let (_, again) = get_image(&c, m2, &thumb).await;
    assert_eq!(&again, body);
    let (_, again) = get_image(&c, m1, &thumb).await;
    assert_eq!(&again, body);
    assert_eq!(
        all_renders(&c).await,
        before + 1,
        "later reads do not render"
    );

    // Through the gateway's redirect: a new size, rendered by the member the gateway sends the client to.
    let wide = slave(&master, "_800x0", "jpg");
    let img = image::load_from_memory(&c.download(&wide.to_string()).await).unwrap();
    assert_eq!(img.dimensions(), (800, 533), "800 wide, ratio kept");
    // Crop-to-fill: exactly the box.
    let (_, body) = get_image(&c, m2, &slave(&master, "_100x100c", "jpg")).await;
    assert_eq!(
        image::load_from_memory(&body).unwrap().dimensions(),
        (100, 100)
    );
    assert_eq!(all_renders(&c).await, before + 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thumbnails_are_turned_by_exif_keep_alpha_and_decode_as_webp() {
    let c = start().await;
    let m1 = &c.storage[0][0];

    // 400x200, red left half, blue right half; EXIF says rotate 90 clockwise: displayed 200x400, red on top.
    let raw = DynamicImage::ImageRgb8(RgbImage::from_fn(400, 200, |x, _| {
        if x < 200 {
            Rgb([255, 0, 0])
        } else {
            Rgb([0, 0, 255])
        }
    }));
    let master = upload(&c, "turned.jpg", with_exif_orientation_6(&jpeg(&raw))).await;
    let (_, body) = get_image(&c, m1, &slave(&master, "_150x150", "jpg")).await;
    let img = image::load_from_memory(&body).unwrap().to_rgb8();
    assert_eq!(img.dimensions(), (75, 150), "portrait once turned");
    let (top, bottom) = (img.get_pixel(37, 10), img.get_pixel(37, 140));
    assert!(top[0] > 200 && top[2] < 60, "red on top: {top:?}");
    assert!(
        bottom[2] > 200 && bottom[0] < 60,
        "blue at the bottom: {bottom:?}"
    );
    // Metadata stripped: no EXIF in the output.
    assert!(!body.windows(6).any(|w| w == b"Exif\0\0"));

    // PNG with a transparent left half: alpha kept in PNG and in WebP.
    let rgba = DynamicImage::ImageRgba8(RgbaImage::from_fn(300, 300, |x, _| {
        if x < 150 {
            Rgba([0, 0, 0, 0])
        } else {
            Rgba([0, 200, 0, 255])
        }
    }));
    let master = upload(&c, "logo.png", png(&rgba)).await;
    // Alpha of the transparent half at most, of the opaque half at least (WebP is lossy).
    for (ext, format, ct, transparent, opaque) in [
        ("png", ImageFormat::Png, "image/png", 0, 255),
        ("webp", ImageFormat::WebP, "image/webp", 9, 246),
    ] {
        let (headers, body) = get_image(&c, m1, &slave(&master, "_150x150", ext)).await;
        assert_eq!(headers[header::CONTENT_TYPE], ct);
        let img = image::load_from_memory_with_format(&body, format)
            .unwrap()
            .to_rgba8();
        assert_eq!(img.dimensions(), (150, 150), "{ext}");
        let (left, right) = (img.get_pixel(10, 75)[3], img.get_pixel(140, 75)[3]);
        assert!(left <= transparent, "{ext}: transparent stays transparent");
        assert!(right >= opaque, "{ext}: opaque stays opaque");
    }

    // A JPEG master asked as WebP (lossy) decodes.
    let master = upload(&c, "photo.jpg", jpeg(&photo(640, 480))).await;
    let (_, body) = get_image(&c, m1, &slave(&master, "_300x300", "webp")).await;
    assert_eq!(&body[..4], b"RIFF");
    let img = image::load_from_memory_with_format(&body, ImageFormat::WebP).unwrap();
    assert_eq!(img.dimensions(), (300, 225));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_sizes_bombs_and_non_images_are_refused_and_leave_nothing() {
    let c = start().await;
    let m1 = &c.storage[0][0];
    let master = upload(&c, "photo.jpg", jpeg(&photo(320, 240))).await;

    // A size that is not configured: 404 with its own code and the sizes that are, nothing rendered.
    let odd = slave(&master, "_123x123", "jpg");
    let body: Value = get(&c, m1, &odd).await.json().await.unwrap();
    assert_eq!(
        body["error"]["code"], "thumbnail_size_not_configured",
        "{body}"
    );
    let message = body["error"]["message"].as_str().unwrap();
    for size in ["100x100c", "150x150", "300x300", "800x0", "thumbnail_sizes"] {
        assert!(message.contains(size), "{message}");
    }
    // Nothing this master can become (a JPEG as GIF): a plain 404.
    let (status, code) = error_of(get(&c, m1, &slave(&master, "_123x123", "gif")).await).await;
    assert_eq!((status, code.as_str()), (404, "not_found"));
    // A format conversion other than to WebP: 404.
    let (status, _) = error_of(get(&c, m1, &slave(&master, "_150x150", "png")).await).await;
    assert_eq!(status, 404);

    // 100 000 x 100 000 pixels claimed by a tiny PNG: refused from its header.
    let bomb = upload(&c, "bomb.png", bomb_png(100_000, 100_000)).await;
    let thumb = slave(&bomb, "_150x150", "png");
    let (status, code) = error_of(get(&c, m1, &thumb).await).await;
    assert_eq!((status, code.as_str()), (422, "image_too_large"));

    // Text named .jpg.
    let text = upload(&c, "notes.jpg", b"just some text, not a picture\n".to_vec()).await;
    let fake = slave(&text, "_150x150", "jpg");
    let r = get(&c, m1, &fake).await;
    assert_eq!(
        r.headers()[header::CONTENT_TYPE],
        "application/json",
        "a JSON error"
    );
    let (status, code) = error_of(r).await;
    assert_eq!((status, code.as_str()), (422, "not_an_image"));

    // Nothing of any of them on any member.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for n in c.all_storage() {
        for id in [&odd, &thumb, &fake] {
            assert!(!on_disk(n, id).exists(), "{id} on {}", n.name);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_with_thumbnails_answer_the_slave_ids() {
    let c = start().await;
    let gw = c.gateway_url();
    let jpg = jpeg(&photo(900, 600));

    // PUT with the query.
    let answer = c
        .upload("shoe.jpg?thumbnails=150x150,300x300", jpg.clone())
        .await;
    let thumbs = answer["thumbnails"].as_array().unwrap();
    assert_eq!(thumbs.len(), 2, "{answer}");
    for (t, (size, dims)) in thumbs
        .iter()
        .zip([("150x150", (150, 100)), ("300x300", (300, 200))])
    {
        assert_eq!(t["size"], size);
        let id: FileId = t["file_id"].as_str().unwrap().parse().unwrap();
        assert_eq!(
            id,
            slave(
                answer["file_id"].as_str().unwrap(),
                &format!("_{size}"),
                "jpg"
            )
        );
        let body = c.follow.get(t["url"].as_str().unwrap()).ok_bytes().await;
        assert_eq!(image::load_from_memory(&body).unwrap().dimensions(), dims);
    }

    // Multipart field, and a size the nodes do not render: the upload stands, that entry says why.
    let form = reqwest::multipart::Form::new()
        .text("thumbnails", "150x150,77x77")
        .part(
            "file",
            reqwest::multipart::Part::bytes(jpg.clone()).file_name("boot.jpg"),
        );
    let answer: Value = c
        .http
        .post(format!("{gw}/upload"))
        .multipart(form)
        .ok_json()
        .await;
    let thumbs = answer["thumbnails"].as_array().unwrap();
    assert!(thumbs[0]["file_id"]
        .as_str()
        .unwrap()
        .ends_with("_150x150.jpg"));
    assert!(thumbs[0].get("error").is_none(), "{answer}");
    assert_eq!(
        thumbs[1]["error"]["code"], "thumbnail_size_not_configured",
        "{answer}"
    );
    // Thumbnails of a non-image: skipped, and said why; the upload stands.
    let answer = c
        .upload("notes.txt?thumbnails=150x150", b"plain text\n".to_vec())
        .await;
    let t = &answer["thumbnails"][0];
    assert_eq!(t["skipped"], true, "{answer}");
    assert_eq!(t["error"]["code"], "not_an_image", "{answer}");
    assert!(
        t["error"]["message"].as_str().unwrap().contains("only"),
        "{answer}"
    );
    c.download(answer["file_id"].as_str().unwrap()).await;
    // A malformed size is refused before anything is stored.
    let r = c.http.put(format!("{gw}/upload/x.jpg?thumbnails=big"));
    assert_eq!(
        r.body(jpg.clone()).go().await.status(),
        StatusCode::BAD_REQUEST
    );

    // `fdfs upload --thumbnails`.
    let file = c.dir.path().join("hat.jpg");
    std::fs::write(&file, &jpg).unwrap();
    let out = tokio::process::Command::from(node::command())
        .env("FDFS_GATEWAY", &gw)
        .args(["upload", "--thumbnails", "300x300", file.to_str().unwrap()])
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(answer["thumbnails"][0]["file_id"]
        .as_str()
        .unwrap()
        .ends_with("_300x300.jpg"));
    // A size that fails: the answer is still printed, the exit code says it failed, stderr says which.
    let out = tokio::process::Command::from(node::command())
        .env("FDFS_GATEWAY", &gw)
        .args([
            "upload",
            "--thumbnails",
            "150x150,64x64",
            file.to_str().unwrap(),
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("64x64") && stderr.contains("thumbnail_size_not_configured"),
        "{stderr}"
    );
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(answer["file_id"].is_string(), "{answer}");
}

/// Upload `body` as a slave `prefix` of `master` through the gateway.
async fn upload_slave(c: &Cluster, master: &str, prefix: &str, body: Vec<u8>) -> FileId {
    let form = reqwest::multipart::Form::new()
        .text("master_file_id", master.to_owned())
        .text("prefix", prefix.to_owned())
        .part(
            "file",
            reqwest::multipart::Part::bytes(body).file_name("s.jpg"),
        );
    let j: Value = c
        .http
        .post(format!("{}/upload", c.gateway_url()))
        .multipart(form)
        .ok_json()
        .await;
    j["file_id"].as_str().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_master_deletes_its_rendered_thumbnails_on_every_member() {
    let c = start().await;
    let (m1, m2) = (&c.storage[0][0], &c.storage[0][1]);
    let gw = c.gateway_url();
    let master = upload(&c, "mug.jpg", jpeg(&photo(640, 480))).await;
    // Rendered on either member, as browsers ask: three sizes and a WebP; and one slave uploaded by hand.
    let rendered = [
        slave(&master, "_150x150", "jpg"),
        slave(&master, "_300x300", "jpg"),
        slave(&master, "_100x100c", "jpg"),
        slave(&master, "_150x150", "webp"),
    ];
    for (i, t) in rendered.iter().enumerate() {
        get_image(&c, [m1, m2][i % 2], t).await;
    }
    let uploaded = upload_slave(&c, &master, "_64x64", jpeg(&photo(64, 48))).await;
    let master_id: FileId = master.parse().unwrap();
    let everything: Vec<&FileId> = rendered.iter().chain([&uploaded, &master_id]).collect();
    for n in [m1, m2] {
        for id in &everything {
            eventually(30, "every file on every member", || async {
                on_disk(n, id).exists().then_some(())
            })
            .await;
        }
    }
    let renders = all_renders(&c).await;

    // DELETE of the master: the answer names the rendered thumbnails; the uploaded slave stays (FastDFS).
    let answer: Value = c.http.delete(format!("{gw}/{master}")).ok_json().await;
    let mut said: Vec<String> = answer["slaves_deleted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    said.sort();
    let mut want: Vec<String> = rendered.iter().map(ToString::to_string).collect();
    want.sort();
    assert_eq!(said, want, "{answer}");
    for n in [m1, m2] {
        // The master first: until its delete arrives, a member still renders a thumbnail asked of it (and the
        // master's delete then takes that with it).
        for id in [&master_id].into_iter().chain(rendered.iter()) {
            eventually(
                30,
                "the master and its thumbnails gone from every member",
                || async { (!on_disk(n, id).exists()).then_some(()) },
            )
            .await;
            // Not rendered again: the master is gone (asked of this member alone; it would otherwise proxy the
            // read to a member the delete has not reached yet).
            let here = c
                .http
                .get(format!("{}/{id}", n.url()))
                .header("x-fdfs-no-proxy", "1");
            assert_eq!(
                here.go().await.status(),
                StatusCode::NOT_FOUND,
                "{id} on {}",
                n.name
            );
        }
        assert!(
            on_disk(n, &uploaded).exists(),
            "the uploaded slave stays on {}",
            n.name
        );
        // No metadata file left behind either.
        let dir = on_disk(n, &master_id).parent().unwrap().to_owned();
        let left: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|f| f.starts_with(master_id.name.master_part()))
            .collect();
        assert_eq!(left, [uploaded.name.to_string()], "{}", n.name);
    }
    assert_eq!(
        all_renders(&c).await,
        renders,
        "nothing rendered after the delete"
    );

    // `?slaves=all`: every slave goes, uploaded ones too.
    let master = upload(&c, "cup.jpg", jpeg(&photo(400, 300))).await;
    let thumb = slave(&master, "_150x150", "jpg");
    get_image(&c, m1, &thumb).await;
    let uploaded = upload_slave(&c, &master, "-print", jpeg(&photo(64, 48))).await;
    let r = c
        .http
        .delete(format!("{gw}/{master}?slaves=everything"))
        .go()
        .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let answer: Value = c
        .http
        .delete(format!("{gw}/{master}?slaves=all"))
        .ok_json()
        .await;
    assert_eq!(
        answer["slaves_deleted"].as_array().unwrap().len(),
        2,
        "{answer}"
    );
    let master_id: FileId = master.parse().unwrap();
    for n in [m1, m2] {
        for id in [&thumb, &uploaded, &master_id] {
            eventually(30, "every slave gone from every member", || async {
                (!on_disk(n, id).exists()).then_some(())
            })
            .await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attname_gives_content_disposition_on_nodes_and_through_the_gateway() {
    let c = start().await;
    let master = upload(&c, "photo.jpg", jpeg(&photo(64, 64))).await;
    let want = "attachment; filename=\"caf_ mug.jpg\"; filename*=UTF-8''caf%C3%A9%20mug.jpg";
    let node = &c.storage[0][0];
    let r = c
        .http
        .get(format!(
            "{}/{master}?attname=caf%C3%A9%20mug.jpg",
            node.url()
        ))
        .go()
        .await;
    assert_eq!(r.headers()[header::CONTENT_DISPOSITION], want);
    // The gateway passes it on in its redirect, and the node it sends the client to answers with it.
    let r = c
        .follow
        .get(format!(
            "{}/{master}?attname=caf%C3%A9%20mug.jpg",
            c.gateway_url()
        ))
        .go()
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()[header::CONTENT_DISPOSITION], want);
    // Without it: no such header (the browser shows the file inline).
    let r = c.http.get(format!("{}/{master}", node.url())).go().await;
    assert!(r.headers().get(header::CONTENT_DISPOSITION).is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_finds_and_removes_a_thumbnail_whose_master_is_gone() {
    let c = start().await;
    let master = upload(&c, "lamp.jpg", jpeg(&photo(300, 200))).await;
    let master_id: FileId = master.parse().unwrap();
    let thumb = slave(&master, "_150x150", "webp");
    get_image(&c, &c.storage[0][0], &thumb).await;
    // The master removed behind both nodes' backs (as a render racing the master's delete could leave it).
    for n in c.all_storage() {
        eventually(30, "the thumbnail on every member", || async {
            on_disk(n, &thumb).exists().then_some(())
        })
        .await;
        let path = on_disk(n, &master_id);
        std::fs::remove_file(&path).unwrap();
        let _ = std::fs::remove_file(format!("{}-m", path.display()));
    }
    let verify = |repair: bool| {
        let mut cmd = node::command_with_secret();
        cmd.args(["--gateway", &c.gateway_url(), "verify", "--json"]);
        if repair {
            cmd.arg("--repair");
        }
        let out = cmd.output().unwrap();
        let report: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
        (out.status.code(), report)
    };
    let (code, r) = verify(false);
    assert_eq!(code, Some(1), "{r:#}");
    assert_eq!(r["corrupt"], 2, "one orphan per member: {r:#}");
    let text = r.to_string();
    assert!(
        text.contains("a rendered thumbnail whose master is gone"),
        "{r:#}"
    );
    let (code, r) = verify(true);
    assert_eq!(code, Some(0), "{r:#}");
    for n in c.all_storage() {
        eventually(30, "the orphan gone from every member", || async {
            (!on_disk(n, &thumb).exists()).then_some(())
        })
        .await;
    }
    let (code, r) = verify(false);
    assert_eq!((code, r["corrupt"].as_u64()), (Some(0), Some(0)), "{r:#}");
}
