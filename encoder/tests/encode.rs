//! Encodes generated clips through the library and checks what players rely
//! on: aligned segment boundaries across rungs, keyframes at every segment
//! start, exact durations, the catalog written last and nothing on failure.

use encoder::{encode_and_publish, EncodeError, EncodeSettings};
use origin::LocalStore;
use vod::{MediaKind, TitleId};

fn quiet(segment_ms: u64) -> EncodeSettings {
    EncodeSettings { segment_ms, preset: "ultrafast".into(), progress: false }
}

#[test]
fn rungs_share_segment_boundaries_and_durations() {
    let dir = tempfile::tempdir().unwrap();
    let clip = dir.path().join("clip.mp4");
    stack::generate_clip(&clip, 5, 480, 270).unwrap();
    let store = LocalStore::new(dir.path().join("store"));
    let title = TitleId::new("aligned").unwrap();
    let cat = encode_and_publish(&clip, &title, &store, &quiet(1000)).unwrap();

    let video = cat.video();
    assert_eq!(video.iter().map(|r| r.height.unwrap()).collect::<Vec<_>>(), vec![270, 180, 90]);
    let timeline = |r: &vod::Rendition| r.segments.iter().map(|s| (s.start, s.duration)).collect::<Vec<_>>();
    for r in &video[1..] {
        assert_eq!(timeline(r), timeline(video[0]), "{} cuts differently from {}", r.id, video[0].id);
    }
    assert_eq!(video[0].segments.len(), 5, "one segment per second of a 5 s clip");
    for r in &cat.renditions {
        assert!((r.duration_seconds() - 5.0).abs() < 0.05, "{}: {}s", r.id, r.duration_seconds());
        for (i, s) in r.segments.iter().enumerate() {
            let path = store.root().join(format!("titles/aligned/{}/{}.m4s", r.id, i + 1));
            assert_eq!(std::fs::metadata(&path).unwrap().len(), s.bytes);
        }
    }
    // Bitrates land near the ladder's targets (VBV-constrained), audio near 128k.
    let audio = cat.renditions.iter().find(|r| r.kind == MediaKind::Audio).unwrap();
    assert!((100_000..170_000).contains(&audio.average_bandwidth_bps), "{}", audio.average_bandwidth_bps);
    assert!(video[0].bandwidth_bps >= video[0].average_bandwidth_bps);

    // Republishing in place is refused: segments are immutable.
    let again = encode_and_publish(&clip, &title, &store, &quiet(1000));
    assert!(matches!(again, Err(EncodeError::AlreadyPublished(_))));
}

#[test]
fn a_clip_without_audio_gets_video_only_manifests() {
    let dir = tempfile::tempdir().unwrap();
    let clip = dir.path().join("silent.mp4");
    stack::generate_clip_with(&clip, 2, 320, 180, 30, false).unwrap();
    let store = LocalStore::new(dir.path().join("store"));
    let cat = encode_and_publish(&clip, &TitleId::new("silent").unwrap(), &store, &quiet(1000)).unwrap();
    assert!(cat.audio().is_empty());
    let master = std::fs::read_to_string(store.root().join("titles/silent/hls/master.m3u8")).unwrap();
    assert!(!master.contains("TYPE=AUDIO") && !master.contains("mp4a"), "{master}");
    let mpd = std::fs::read_to_string(store.root().join("titles/silent/dash/manifest.mpd")).unwrap();
    assert_eq!(mpd.matches("<AdaptationSet").count(), 1);
}

fn ffmpeg(args: &[&str]) {
    let args: Vec<String> =
        ["-hide_banner", "-loglevel", "error", "-y"].iter().chain(args).map(|s| s.to_string()).collect();
    let (status, _, err) = stack::run(std::path::Path::new("ffmpeg"), &args).unwrap();
    assert!(status.success(), "ffmpeg {args:?}: {err}");
}

#[test]
fn unclean_sources_play_the_right_way_up_and_shape() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).display().to_string();
    // One second of testsrc2 at `size`, x264 ultrafast, with `extra` options.
    let testsrc = |size: &str, extra: &[&str], out: &str| {
        let input = format!("testsrc2=size={size}:rate=25");
        let mut args = vec!["-f", "lavfi", "-i", &input, "-t", "1", "-c:v", "libx264", "-preset", "ultrafast"];
        args.extend_from_slice(extra);
        let out = p(out);
        args.push(&out);
        ffmpeg(&args);
    };
    // Anamorphic PAL: 720x576 stored, 768x576 shown.
    testsrc("720x576", &["-vf", "setsar=16/15"], "sar.mp4");
    // A phone video: stored landscape, shown portrait by its display matrix.
    testsrc("640x360", &["-pix_fmt", "yuv420p"], "land.mp4");
    ffmpeg(&["-i", &p("land.mp4"), "-c", "copy", "-metadata:s:v:0", "rotate=90", &p("rot.mp4")]);
    // 10-bit, odd dimensions, interlaced.
    testsrc("641x361", &["-pix_fmt", "yuv420p10le"], "ten.mp4");
    testsrc("640x360", &["-vf", "interlace", "-flags", "+ildct+ilme"], "inter.mp4");

    let store = LocalStore::new(dir.path().join("store"));
    let encode = |file: &str, title: &str| {
        encode_and_publish(std::path::Path::new(&p(file)), &TitleId::new(title).unwrap(), &store, &quiet(1000)).unwrap()
    };
    let top = |c: &vod::Catalog| (c.video()[0].width.unwrap(), c.video()[0].height.unwrap());
    assert_eq!(top(&encode("sar.mp4", "sar")), (640, 480), "square-pixel 4:3 rungs from anamorphic PAL");
    let rot = encode("rot.mp4", "rot");
    let (w, h) = top(&rot);
    assert!(h > w, "rotated source must give portrait rungs, got {w}x{h}");
    for (file, title) in [("ten.mp4", "ten"), ("inter.mp4", "inter")] {
        let c = encode(file, title);
        assert_eq!(c.video().len(), 3, "{title}");
        assert!(c.video().iter().all(|r| r.width.unwrap() % 2 == 0 && r.height.unwrap() % 2 == 0));
    }
}
