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
