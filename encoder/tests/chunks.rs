//! Chunked encodes: tasks run in any order (as a fleet would run them) join
//! into renditions that decode to exactly the source's frames, with the same
//! timestamps, and match a single-process encode of the same job.

use std::path::{Path, PathBuf};

use encoder::{finalize, plan_tasks, run_job, run_task, EncodeError, JobSpec, LadderSpec, TaskSpec, VideoCodec};
use origin::{LocalStore, PublishTarget};
use vod::{Catalog, MediaKind, ObjectKey, TitleId};

/// The tests of this file encode one at a time. Byte identity between a chunked
/// and a single-process encode holds for one encode per process (a worker runs
/// one task at a time), but with other encodes (x265, SVT-AV1, x264) running
/// in the same process at once, a segment has come out a few bytes different
/// in some runs; the cause is not found yet.
static ONE_ENCODE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_ENCODE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

fn ffprobe_frames(file: &Path) -> Vec<f64> {
    let args: Vec<String> = [
        "-v",
        "error",
        "-select_streams",
        "v:0",
        "-show_entries",
        "frame=pts_time",
        "-of",
        "csv=p=0",
        &file.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let (status, out, err) = stack::run(Path::new("ffprobe"), &args).unwrap();
    assert!(status.success(), "ffprobe {}: {err}", file.display());
    out.lines().filter(|l| !l.trim().is_empty()).map(|l| l.trim().trim_end_matches(',').parse().unwrap()).collect()
}

/// Same frame count and timestamps. ffmpeg's demuxer moves a track with
/// negative composition offsets later by the largest of them, so timestamps
/// are compared relative to the first frame.
fn assert_same_frames(frames: &[f64], source: &[f64], what: &str) {
    assert_eq!(frames.len(), source.len(), "{what}: frame count");
    for (i, (a, b)) in frames.iter().zip(source).enumerate() {
        let (a, b) = (a - frames[0], b - source[0]);
        assert!((a - b).abs() < 0.0015, "{what} frame {i}: {a} vs source {b}");
    }
    // ffprobe lists frames in presentation order: none repeated, none missing.
    assert!(frames.windows(2).all(|w| w[1] > w[0]), "{what}: timestamps not increasing");
}

/// Concatenates a published rendition (init + every segment) into one file.
fn whole_rendition(store: &LocalStore, cat: &Catalog, id: &str, out: &Path) -> PathBuf {
    let r = cat.renditions.iter().find(|r| r.id.as_str() == id).unwrap();
    let mut bytes = std::fs::read(store.path_of(&ObjectKey::Init(cat.title.clone(), r.id.clone()))).unwrap();
    for n in 1..=r.segments.len() as u32 {
        bytes.extend(std::fs::read(store.path_of(&ObjectKey::Segment(cat.title.clone(), r.id.clone(), n))).unwrap());
    }
    let path = out.join(format!("{}-{id}.mp4", cat.title));
    std::fs::write(&path, bytes).unwrap();
    path
}

fn spec(title: &str, chunk_segments: u32) -> JobSpec {
    let mut s = JobSpec::new(TitleId::new(title).unwrap());
    s.segment_ms = 1000;
    // veryfast has B-frames: decode and presentation order differ across joins.
    s.preset = "veryfast".into();
    s.chunk_segments = Some(chunk_segments);
    s
}

#[test]
fn chunks_in_any_order_join_into_the_source_frames() {
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    // A source with B-frames and a keyframe every 0.48 s: chunk starts fall
    // between keyframes, so every chunk but the first seeks and drops frames.
    let clip = dir.path().join("clip.mp4");
    let args: Vec<String> = [
        "-hide_banner",
        "-loglevel",
        "error",
        "-y",
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=320x180:rate=25",
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440:sample_rate=44100",
        "-t",
        "6",
        "-c:v",
        "libx264",
        "-preset",
        "veryfast",
        "-g",
        "12",
        "-bf",
        "3",
        "-pix_fmt",
        "yuv420p",
        "-c:a",
        "aac",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([clip.display().to_string()])
    .collect();
    let (status, _, err) = stack::run(Path::new("ffmpeg"), &args).unwrap();
    assert!(status.success(), "{err}");
    let source = ffprobe_frames(&clip);
    assert_eq!(source.len(), 150);

    let spec = spec("chunked", 2);
    let tasks = plan_tasks(&clip, &spec).unwrap();
    let names: Vec<String> = tasks.iter().map(TaskSpec::name).collect();
    assert_eq!(names, ["video-000", "video-001", "video-002", "audio"]);
    assert_eq!(tasks[1], TaskSpec::Video { chunk: 1, first_segment: 3, segments: 2 });

    // Finalizing before every task has run is refused, naming the task.
    let staging = dir.path().join("staging");
    let store = LocalStore::new(dir.path().join("store"));
    run_task(&clip, &spec, &tasks[2], &staging, Some(1), &mut |_| {}).unwrap();
    let early = finalize(&clip, &spec, &tasks, &staging, &store).unwrap_err();
    assert!(matches!(&early, EncodeError::Task { task, .. } if task == "video-000"), "{early}");
    assert!(!store.root().join("titles/chunked").exists());

    let mut fractions = Vec::new();
    for t in tasks.iter().rev() {
        run_task(&clip, &spec, t, &staging, Some(1), &mut |f| fractions.push(f)).unwrap();
    }
    assert!(fractions.iter().all(|f| (0.0..=1.0).contains(f)) && fractions.last() == Some(&1.0));
    let cat = finalize(&clip, &spec, &tasks, &staging, &store).unwrap();
    assert!(store.exists_blocking(&ObjectKey::Catalog(cat.title.clone())).unwrap());

    let video = cat.video();
    assert_eq!(video.len(), 3);
    for r in &video {
        assert_eq!(r.segments.len(), 6, "{}", r.id);
        for w in r.segments.windows(2) {
            assert_eq!(w[0].start + w[0].duration, w[1].start, "{}: segments must be contiguous", r.id);
        }
        // Segment k presents from the source frame at k seconds (B-frame delay
        // folded into signed composition offsets, so no edit list is needed).
        for (k, seg) in r.segments.iter().enumerate() {
            assert_eq!(seg.start, k as u64 * u64::from(r.timescale), "{} segment {}", r.id, k + 1);
        }
        let file = whole_rendition(&store, &cat, r.id.as_str(), dir.path());
        assert_same_frames(&ffprobe_frames(&file), &source, r.id.as_str());
    }
    let audio = &cat.audio()[0];
    assert!((audio.duration_seconds() - 6.0).abs() < 0.05);
    assert_eq!(cat.renditions.iter().filter(|r| r.kind == MediaKind::Video).count(), 3);

    // The same job in one process, tasks in order: the same frames and, with
    // one x264 thread per rendition, the same bytes.
    let single_store = LocalStore::new(dir.path().join("single"));
    let single = run_job(&clip, &spec, &dir.path().join("staging2"), &single_store, Some(1), &mut |_, _| {}).unwrap();
    assert_eq!(single.renditions.len(), cat.renditions.len());
    for (a, b) in single.renditions.iter().zip(&cat.renditions) {
        assert_eq!((&a.id, &a.codecs, a.init_bytes), (&b.id, &b.codecs, b.init_bytes));
        for (x, y) in a.segments.iter().zip(&b.segments) {
            assert_eq!((x.start, x.duration), (y.start, y.duration), "{}", a.id);
            assert_eq!(x.bytes, y.bytes, "{}", a.id);
        }
        for n in 1..=a.segments.len() as u32 {
            let key = |t: &Catalog| ObjectKey::Segment(t.title.clone(), a.id.clone(), n);
            let (x, y) = (std::fs::read(single_store.path_of(&key(&single))), std::fs::read(store.path_of(&key(&cat))));
            assert!(x.unwrap() == y.unwrap(), "{} segment {n} differs", a.id);
        }
        if a.kind == MediaKind::Video {
            let frames = ffprobe_frames(&whole_rendition(&single_store, &single, a.id.as_str(), dir.path()));
            assert_same_frames(&frames, &source, &format!("single-process {}", a.id));
        }
    }

    // And a one-chunk encode decodes to the same frames.
    let whole_store = LocalStore::new(dir.path().join("whole"));
    let whole_spec = JobSpec { title: TitleId::new("whole").unwrap(), chunk_segments: Some(100), ..spec.clone() };
    let whole = run_job(&clip, &whole_spec, &dir.path().join("staging3"), &whole_store, None, &mut |_, _| {}).unwrap();
    assert_eq!(whole.video()[0].segments.len(), 6);
    let frames = ffprobe_frames(&whole_rendition(&whole_store, &whole, whole.video()[0].id.as_str(), dir.path()));
    assert_same_frames(&frames, &source, "one chunk");

    // Republishing is refused; cleaning a published title leaves it alone.
    assert!(matches!(finalize(&clip, &spec, &tasks, &staging, &store), Err(EncodeError::AlreadyPublished(_))));
    encoder::clean_partial(&cat.title, &store).unwrap();
    assert!(store.root().join("titles/chunked/catalog.json").exists());
}

#[test]
fn partial_titles_are_cleaned() {
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::new(dir.path());
    let title = TitleId::new("half").unwrap();
    let seg = ObjectKey::parse("titles/half/v180/1.m4s").unwrap();
    store.put_blocking(&seg, b"data").unwrap();
    let other = ObjectKey::parse("titles/halfway/v180/1.m4s").unwrap();
    store.put_blocking(&other, b"data").unwrap();
    encoder::clean_partial(&title, &store).unwrap();
    assert!(!store.exists_blocking(&seg).unwrap());
    assert!(store.exists_blocking(&other).unwrap(), "another title sharing a name prefix must survive");
}

#[test]
fn extra_codecs_get_their_own_renditions_and_codec_strings() {
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let clip = dir.path().join("clip.mp4");
    stack::generate_clip(&clip, 2, 320, 180).unwrap();
    let mut spec = spec("codecs", 1);
    spec.preset = "ultrafast".into();
    spec.codecs = VideoCodec::parse_list("h264,hevc,av1").unwrap();
    spec.ladder = LadderSpec::from_toml_str(
        "[[rung]]\nheight = 180\nkbps = 400\n[[rung]]\nheight = 120\nkbps = 200\n[[rung]]\nheight = 64\nkbps = 100\n",
        "test",
    )
    .unwrap();
    let store = LocalStore::new(dir.path().join("store"));
    let cat = run_job(&clip, &spec, &dir.path().join("staging"), &store, None, &mut |_, _| {}).unwrap();
    let ids: Vec<&str> = cat.renditions.iter().map(|r| r.id.as_str()).collect();
    assert!(ids.contains(&"v180") && ids.contains(&"v180-hevc") && ids.contains(&"v180-av1"), "{ids:?}");
    let source = ffprobe_frames(&clip);
    for r in cat.video() {
        let c = &r.codecs;
        let ok = c.starts_with("avc1.") || c.starts_with("hvc1.1.6.L") || c.starts_with("av01.0.");
        assert!(ok, "{}: {c}", r.id);
        let frames = ffprobe_frames(&whole_rendition(&store, &cat, r.id.as_str(), dir.path()));
        assert_same_frames(&frames, &source, &format!("{} ({c})", r.id));
        assert_eq!(r.segments.len(), 2, "{}", r.id);
    }
    let master = std::fs::read_to_string(store.root().join("titles/codecs/hls/master.m3u8")).unwrap();
    for codec in ["avc1.", "hvc1.", "av01."] {
        assert!(master.contains(&format!("CODECS=\"{codec}")), "{master}");
    }
    let mpd = std::fs::read_to_string(store.root().join("titles/codecs/dash/manifest.mpd")).unwrap();
    assert_eq!(mpd.matches("<AdaptationSet").count(), 4, "one per video codec plus audio: {mpd}");
}

#[test]
fn planning_refuses_sources_that_cannot_be_encoded() {
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let spec = spec("bad", 2);
    let text = dir.path().join("notes.mp4");
    std::fs::write(&text, "not a video\n".repeat(50)).unwrap();
    assert!(matches!(plan_tasks(&text, &spec), Err(EncodeError::NotMedia { .. })));
    assert!(matches!(plan_tasks(&dir.path().join("missing.mp4"), &spec), Err(EncodeError::InputMissing(_))));

    let whole = dir.path().join("whole.mp4");
    stack::generate_clip(&whole, 4, 320, 180).unwrap();
    let bytes = std::fs::read(&whole).unwrap();
    let cut = dir.path().join("cut.mp4");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let e = plan_tasks(&cut, &spec).unwrap_err();
    assert!(matches!(e, EncodeError::Truncated { .. }), "{e}");

    let audio_only = dir.path().join("tone.m4a");
    let args: Vec<String> = ["-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i", "sine", "-t", "1"]
        .iter()
        .map(|s| s.to_string())
        .chain([audio_only.display().to_string()])
        .collect();
    assert!(stack::run(Path::new("ffmpeg"), &args).unwrap().0.success());
    assert!(matches!(plan_tasks(&audio_only, &spec), Err(EncodeError::NoVideo(_))));

    let mut bad = spec.clone();
    bad.segment_ms = 10;
    assert!(matches!(plan_tasks(&whole, &bad), Err(EncodeError::BadSpec(_))));
    let e = LadderSpec::from_toml_file(&dir.path().join("nope.toml")).unwrap_err().to_string();
    assert!(e.contains("nope.toml"), "{e}");
}

fn ffmpeg(args: &[&str]) {
    let args: Vec<String> =
        ["-hide_banner", "-loglevel", "error", "-y"].iter().chain(args).map(|s| s.to_string()).collect();
    let (status, _, err) = stack::run(Path::new("ffmpeg"), &args).unwrap();
    assert!(status.success(), "ffmpeg {args:?}: {err}");
}

#[test]
fn unclean_sources_join_frame_exact_across_chunks() {
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).display().to_string();
    let src = "testsrc2=size=480x272:rate=25";
    // Interlaced, B-frames, keyframes between segment starts, shown rotated.
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        src,
        "-t",
        "4",
        "-vf",
        "interlace",
        "-flags",
        "+ildct+ilme",
        "-c:v",
        "libx264",
        "-g",
        "10",
        "-bf",
        "2",
        "-pix_fmt",
        "yuv420p",
        &p("inter.mp4"),
    ]);
    ffmpeg(&["-i", &p("inter.mp4"), "-c", "copy", "-metadata:s:v:0", "rotate=90", &p("rot.mp4")]);
    // Variable frame rate: 25 frames/s for 1.2 s, then 40 frames/s.
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=320x180:rate=25:duration=1.2",
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=320x180:rate=40:duration=2.8",
        "-filter_complex",
        "[0:v][1:v]concat=n=2:v=1[v]",
        "-map",
        "[v]",
        "-fps_mode",
        "vfr",
        "-c:v",
        "libx264",
        "-pix_fmt",
        "yuv420p",
        "-video_track_timescale",
        "1000",
        &p("vfr.mp4"),
    ]);
    for (file, title) in [("rot.mp4", "rot"), ("vfr.mp4", "vfr")] {
        let clip = Path::new(&p(file)).to_owned();
        let source = ffprobe_frames(&clip);
        let spec = spec(title, 1);
        let tasks = plan_tasks(&clip, &spec).unwrap();
        assert!(tasks.len() >= 4, "{title}: {tasks:?}");
        let staging = dir.path().join(format!("staging-{title}"));
        for t in tasks.iter().rev() {
            run_task(&clip, &spec, t, &staging, None, &mut |_| {}).unwrap();
        }
        let store = LocalStore::new(dir.path().join("store"));
        let cat = finalize(&clip, &spec, &tasks, &staging, &store).unwrap();
        let top = cat.video()[0];
        if title == "rot" {
            assert!(top.height > top.width, "{title}: {:?}x{:?}", top.width, top.height);
        }
        for r in cat.video() {
            let frames = ffprobe_frames(&whole_rendition(&store, &cat, r.id.as_str(), dir.path()));
            assert_same_frames(&frames, &source, &format!("{title} {}", r.id));
        }
    }
}
