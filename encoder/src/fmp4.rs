//! Just enough ISO-BMFF parsing to cut a fragmented MP4 into CMAF pieces:
//! the init segment (`ftyp` + `moov`), one media segment per `moof`+`mdat`
//! fragment, each fragment's decode time and duration, whether it starts with
//! a sync sample, and the RFC 6381 codecs string of the track. Pure, no I/O.

use std::ops::Range;

/// A box that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed MP4: {0}")]
pub struct Mp4Error(pub String);

fn err<T>(msg: impl Into<String>) -> Result<T, Mp4Error> {
    Err(Mp4Error(msg.into()))
}

/// One box: its type and the byte range of the whole box and of its payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoxRef {
    pub kind: [u8; 4],
    pub whole: Range<usize>,
    pub payload: Range<usize>,
}

/// Lists the boxes that follow each other in `data[range]`.
pub fn boxes(data: &[u8], range: Range<usize>) -> Result<Vec<BoxRef>, Mp4Error> {
    let mut out = Vec::new();
    let mut pos = range.start;
    while pos < range.end {
        if range.end - pos < 8 {
            return err(format!("truncated box header at {pos}"));
        }
        let size32 = u32::from_be_bytes(data[pos..pos + 4].try_into().unwrap_or_default()) as u64;
        let kind: [u8; 4] = data[pos + 4..pos + 8].try_into().unwrap_or_default();
        let (size, header) = match size32 {
            0 => ((range.end - pos) as u64, 8),
            1 => {
                if range.end - pos < 16 {
                    return err("truncated large box header");
                }
                (u64::from_be_bytes(data[pos + 8..pos + 16].try_into().unwrap_or_default()), 16)
            }
            s => (s, 8),
        };
        if size < header as u64 || pos as u64 + size > range.end as u64 {
            return err(format!("box {} at {pos} overruns its parent", String::from_utf8_lossy(&kind)));
        }
        let end = pos + size as usize;
        out.push(BoxRef { kind, whole: pos..end, payload: pos + header..end });
        pos = end;
    }
    Ok(out)
}

fn child(data: &[u8], parent: &Range<usize>, kind: &[u8; 4]) -> Result<Option<BoxRef>, Mp4Error> {
    Ok(boxes(data, parent.clone())?.into_iter().find(|b| &b.kind == kind))
}

fn path(data: &[u8], from: Range<usize>, kinds: &[&[u8; 4]]) -> Result<Option<BoxRef>, Mp4Error> {
    let mut cur = from;
    let mut found = None;
    for k in kinds {
        match child(data, &cur, k)? {
            Some(b) => {
                cur = b.payload.clone();
                found = Some(b);
            }
            None => return Ok(None),
        }
    }
    Ok(found)
}

struct Reader<'a> {
    d: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(d: &'a [u8], r: &Range<usize>) -> Self {
        Self { d: &d[r.clone()], pos: 0 }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], Mp4Error> {
        if self.pos + n > self.d.len() {
            return err("field past the end of its box");
        }
        let s = &self.d[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u32(&mut self) -> Result<u32, Mp4Error> {
        Ok(u32::from_be_bytes(self.take(4)?.try_into().unwrap_or_default()))
    }
    fn u64(&mut self) -> Result<u64, Mp4Error> {
        Ok(u64::from_be_bytes(self.take(8)?.try_into().unwrap_or_default()))
    }
    fn version_flags(&mut self) -> Result<(u8, u32), Mp4Error> {
        let v = self.u32()?;
        Ok(((v >> 24) as u8, v & 0x00ff_ffff))
    }
}

/// What the init segment says about the single track.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackInfo {
    pub timescale: u32,
    /// RFC 6381 codecs string.
    pub codecs: String,
    default_sample_duration: u32,
    default_sample_flags: u32,
}

/// One fragment (`moof`+`mdat`, with any `styp` before it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fragment {
    pub bytes: Range<usize>,
    pub decode_time: u64,
    pub duration: u64,
    pub samples: u32,
    pub starts_with_sync: bool,
}

/// A fragmented MP4 cut into its CMAF parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    pub init: Range<usize>,
    pub track: TrackInfo,
    pub fragments: Vec<Fragment>,
}

/// Splits a fragmented MP4 file with one track.
pub fn split(data: &[u8]) -> Result<Split, Mp4Error> {
    let top = boxes(data, 0..data.len())?;
    let Some(moov_i) = top.iter().position(|b| &b.kind == b"moov") else {
        return err("no moov box");
    };
    if top.first().map(|b| &b.kind) != Some(b"ftyp") {
        return err("file does not start with ftyp");
    }
    let init = 0..top[moov_i].whole.end;
    let track = track_info(data, &top[moov_i].payload)?;
    let mut fragments = Vec::new();
    let mut pending_start: Option<usize> = None;
    let mut i = moov_i + 1;
    while i < top.len() {
        let b = &top[i];
        match &b.kind {
            b"styp" | b"sidx" | b"prft" => {
                pending_start.get_or_insert(b.whole.start);
            }
            b"moof" => {
                let Some(mdat) = top.get(i + 1).filter(|m| &m.kind == b"mdat") else {
                    return err("moof without a following mdat");
                };
                let start = pending_start.take().unwrap_or(b.whole.start);
                let mut f = fragment_info(data, &b.payload, &track)?;
                f.bytes = start..mdat.whole.end;
                fragments.push(f);
                i += 1;
            }
            // mfra and free boxes at the end carry nothing a segment needs.
            _ => pending_start = None,
        }
        i += 1;
    }
    Ok(Split { init, track, fragments })
}

fn track_info(data: &[u8], moov: &Range<usize>) -> Result<TrackInfo, Mp4Error> {
    let mdhd = path(data, moov.clone(), &[b"trak", b"mdia", b"mdhd"])?.ok_or(Mp4Error("no mdhd".into()))?;
    let mut r = Reader::new(data, &mdhd.payload);
    let (v, _) = r.version_flags()?;
    if v == 1 {
        r.take(16)?;
    } else {
        r.take(8)?;
    }
    let timescale = r.u32()?;
    let stsd =
        path(data, moov.clone(), &[b"trak", b"mdia", b"minf", b"stbl", b"stsd"])?.ok_or(Mp4Error("no stsd".into()))?;
    // stsd: version/flags, entry count, then sample entries.
    let entries = boxes(data, stsd.payload.start + 8..stsd.payload.end)?;
    let entry = entries.first().ok_or(Mp4Error("empty stsd".into()))?;
    let codecs = match &entry.kind {
        b"avc1" | b"avc3" => {
            // Visual sample entry: 8 bytes of SampleEntry + 70 of VisualSampleEntry before child boxes.
            let avcc = child(data, &(entry.payload.start + 78..entry.payload.end), b"avcC")?
                .ok_or(Mp4Error("avc1 without avcC".into()))?;
            let c = &data[avcc.payload.clone()];
            if c.len() < 4 {
                return err("short avcC");
            }
            format!("{}.{:02x}{:02x}{:02x}", String::from_utf8_lossy(&entry.kind), c[1], c[2], c[3])
        }
        b"hvc1" | b"hev1" => {
            let hvcc = child(data, &(entry.payload.start + 78..entry.payload.end), b"hvcC")?
                .ok_or(Mp4Error("hvc1 without hvcC".into()))?;
            hevc_codecs(&String::from_utf8_lossy(&entry.kind), &data[hvcc.payload.clone()])?
        }
        b"av01" => {
            let av1c = child(data, &(entry.payload.start + 78..entry.payload.end), b"av1C")?
                .ok_or(Mp4Error("av01 without av1C".into()))?;
            av1_codecs(&data[av1c.payload.clone()])?
        }
        // We encode AAC-LC only.
        b"mp4a" => "mp4a.40.2".to_owned(),
        other => String::from_utf8_lossy(other).into_owned(),
    };
    let (mut default_sample_duration, mut default_sample_flags) = (0, 0);
    if let Some(trex) = path(data, moov.clone(), &[b"mvex", b"trex"])? {
        let mut r = Reader::new(data, &trex.payload);
        r.version_flags()?;
        r.u32()?; // track id
        r.u32()?; // sample description index
        default_sample_duration = r.u32()?;
        r.u32()?; // size
        default_sample_flags = r.u32()?;
    }
    Ok(TrackInfo { timescale, codecs, default_sample_duration, default_sample_flags })
}

/// RFC 6381 / ISO 14496-15 annex E codecs string from an `hvcC` payload,
/// e.g. `hvc1.1.6.L93.B0`.
pub fn hevc_codecs(fourcc: &str, c: &[u8]) -> Result<String, Mp4Error> {
    if c.len() < 13 {
        return err("short hvcC");
    }
    let space = ["", "A", "B", "C"][usize::from(c[1] >> 6)];
    let tier = if c[1] & 0x20 != 0 { 'H' } else { 'L' };
    let profile = c[1] & 0x1f;
    let compat = u32::from_be_bytes([c[2], c[3], c[4], c[5]]).reverse_bits();
    let mut out = format!("{fourcc}.{space}{profile}.{compat:X}.{tier}{}", c[12]);
    let constraints = &c[6..12];
    let used = constraints.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    for b in &constraints[..used] {
        out.push_str(&format!(".{b:X}"));
    }
    Ok(out)
}

/// The AV1 codecs string (`av01.P.LLT.DD`) from an `av1C` payload, e.g. `av01.0.08M.08`.
pub fn av1_codecs(c: &[u8]) -> Result<String, Mp4Error> {
    if c.len() < 4 {
        return err("short av1C");
    }
    let profile = c[1] >> 5;
    let level = c[1] & 0x1f;
    let tier = if c[2] & 0x80 != 0 { 'H' } else { 'M' };
    let depth = match (c[2] & 0x40 != 0, c[2] & 0x20 != 0) {
        (true, true) => 12,
        (true, false) => 10,
        _ => 8,
    };
    Ok(format!("av01.{profile}.{level:02}{tier}.{depth:02}"))
}

/// Rewrites the `tfdt` decode time of one fragment (`[styp] moof mdat`) in place.
pub fn set_decode_time(fragment: &mut [u8], decode_time: u64) -> Result<(), Mp4Error> {
    let top = boxes(fragment, 0..fragment.len())?;
    let moof = top.iter().find(|b| &b.kind == b"moof").ok_or(Mp4Error("fragment without moof".into()))?;
    let tfdt = path(fragment, moof.payload.clone(), &[b"traf", b"tfdt"])?.ok_or(Mp4Error("no tfdt".into()))?;
    let p = tfdt.payload.start;
    if tfdt.payload.len() >= 12 && fragment[p] == 1 {
        fragment[p + 4..p + 12].copy_from_slice(&decode_time.to_be_bytes());
    } else if tfdt.payload.len() >= 8 {
        let t = u32::try_from(decode_time).map_err(|_| Mp4Error("decode time overflows a version 0 tfdt".into()))?;
        fragment[p + 4..p + 8].copy_from_slice(&t.to_be_bytes());
    } else {
        return err("short tfdt");
    }
    Ok(())
}

/// The composition offset of a fragment's first sample (0 when the trun carries none).
pub fn first_composition_offset(fragment: &[u8]) -> Result<i64, Mp4Error> {
    let mut first = None;
    visit_composition_offsets(&mut fragment.to_vec(), &mut |cts| {
        first.get_or_insert(cts);
        cts
    })?;
    Ok(first.unwrap_or(0))
}

/// Subtracts `by` from every composition offset of a fragment, in place, making
/// the `trun` version 1 (signed offsets). Encoders with B-frames start decoding
/// before presenting; this puts the first frame's presentation at its decode
/// time instead of `by` later, with no edit list (which CMAF players ignore).
pub fn shift_composition_offsets(fragment: &mut [u8], by: i64) -> Result<(), Mp4Error> {
    if by == 0 {
        return Ok(());
    }
    visit_composition_offsets(fragment, &mut |cts| cts - by)
}

/// Calls `f` on every sample's composition offset and stores what it returns.
fn visit_composition_offsets(fragment: &mut [u8], f: &mut dyn FnMut(i64) -> i64) -> Result<(), Mp4Error> {
    let top = boxes(fragment, 0..fragment.len())?;
    let moof = top.iter().find(|b| &b.kind == b"moof").ok_or(Mp4Error("fragment without moof".into()))?;
    for traf in boxes(fragment, moof.payload.clone())?.into_iter().filter(|b| &b.kind == b"traf") {
        for trun in boxes(fragment, traf.payload.clone())?.into_iter().filter(|b| &b.kind == b"trun") {
            let (version, flags, count) = {
                let mut r = Reader::new(fragment, &trun.payload);
                let (v, fl) = r.version_flags()?;
                (v, fl, r.u32()?)
            };
            if flags & 0x800 == 0 {
                continue;
            }
            let mut pos = trun.payload.start + 8;
            pos += 4 * usize::from(flags & 0x001 != 0) + 4 * usize::from(flags & 0x004 != 0);
            let per = 4 * [0x100, 0x200, 0x400].iter().filter(|&&b| flags & b != 0).count();
            for _ in 0..count {
                let at = pos + per;
                if at + 4 > trun.payload.end {
                    return err("trun samples past the end of the box");
                }
                let raw: [u8; 4] = fragment[at..at + 4].try_into().unwrap_or_default();
                let cts =
                    if version == 0 { i64::from(u32::from_be_bytes(raw)) } else { i64::from(i32::from_be_bytes(raw)) };
                let new = i32::try_from(f(cts)).map_err(|_| Mp4Error("composition offset out of range".into()))?;
                fragment[at..at + 4].copy_from_slice(&new.to_be_bytes());
                pos = at + 4;
            }
            // Version 1: offsets are signed.
            fragment[trun.payload.start] = 1;
        }
    }
    Ok(())
}

/// Bit 16 of sample flags: sample_is_non_sync_sample.
const NON_SYNC: u32 = 0x0001_0000;

fn fragment_info(data: &[u8], moof: &Range<usize>, track: &TrackInfo) -> Result<Fragment, Mp4Error> {
    let traf = child(data, moof, b"traf")?.ok_or(Mp4Error("moof without traf".into()))?;
    let mut dur_default = track.default_sample_duration;
    let mut flags_default = track.default_sample_flags;
    let tfhd = child(data, &traf.payload, b"tfhd")?.ok_or(Mp4Error("traf without tfhd".into()))?;
    let mut r = Reader::new(data, &tfhd.payload);
    let (_, f) = r.version_flags()?;
    r.u32()?; // track id
    if f & 0x01 != 0 {
        r.u64()?;
    }
    if f & 0x02 != 0 {
        r.u32()?;
    }
    if f & 0x08 != 0 {
        dur_default = r.u32()?;
    }
    if f & 0x10 != 0 {
        r.u32()?;
    }
    if f & 0x20 != 0 {
        flags_default = r.u32()?;
    }
    let decode_time = match child(data, &traf.payload, b"tfdt")? {
        Some(t) => {
            let mut r = Reader::new(data, &t.payload);
            let (v, _) = r.version_flags()?;
            if v == 1 {
                r.u64()?
            } else {
                u64::from(r.u32()?)
            }
        }
        None => return err("traf without tfdt"),
    };
    let (mut duration, mut samples, mut first_flags) = (0u64, 0u32, None);
    for trun in boxes(data, traf.payload.clone())?.into_iter().filter(|b| &b.kind == b"trun") {
        let mut r = Reader::new(data, &trun.payload);
        let (_, f) = r.version_flags()?;
        let count = r.u32()?;
        if f & 0x001 != 0 {
            r.u32()?;
        }
        let mut first_sample_flags = None;
        if f & 0x004 != 0 {
            first_sample_flags = Some(r.u32()?);
        }
        for i in 0..count {
            let d = if f & 0x100 != 0 { r.u32()? } else { dur_default };
            if f & 0x200 != 0 {
                r.u32()?;
            }
            let fl = if f & 0x400 != 0 { r.u32()? } else { flags_default };
            if f & 0x800 != 0 {
                r.u32()?;
            }
            if samples == 0 && i == 0 {
                first_flags = Some(first_sample_flags.unwrap_or(fl));
            }
            duration += u64::from(d);
        }
        samples += count;
    }
    Ok(Fragment {
        bytes: 0..0,
        decode_time,
        duration,
        samples,
        starts_with_sync: first_flags.is_some_and(|f| f & NON_SYNC == 0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bx(kind: &[u8; 4], payload: &[u8]) -> Vec<u8> {
        let mut v = ((payload.len() + 8) as u32).to_be_bytes().to_vec();
        v.extend_from_slice(kind);
        v.extend_from_slice(payload);
        v
    }

    fn full(kind: &[u8; 4], version: u8, flags: u32, rest: &[u8]) -> Vec<u8> {
        let mut p = ((u32::from(version) << 24) | flags).to_be_bytes().to_vec();
        p.extend_from_slice(rest);
        bx(kind, &p)
    }

    fn be(v: &[u32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_be_bytes()).collect()
    }

    fn sample_file() -> Vec<u8> {
        let mdhd = full(b"mdhd", 0, 0, &be(&[0, 0, 12800, 0, 0]));
        let mut avc1 = vec![0u8; 78];
        avc1.extend(bx(b"avcC", &[1, 0x64, 0x00, 0x1f, 0xff]));
        let stsd = full(b"stsd", 0, 0, &[be(&[1]), bx(b"avc1", &avc1)].concat());
        let stbl = bx(b"stbl", &stsd);
        let minf = bx(b"minf", &stbl);
        let mdia = bx(b"mdia", &[mdhd, minf].concat());
        let trak = bx(b"trak", &mdia);
        let trex = full(b"trex", 0, 0, &be(&[1, 1, 512, 0, NON_SYNC]));
        let moov = bx(b"moov", &[trak, bx(b"mvex", &trex)].concat());
        let mut file = [bx(b"ftyp", b"iso6\0\0\0\0"), moov].concat();
        for (t, sync) in [(0u32, true), (51200, false)] {
            let tfhd = full(b"tfhd", 0, 0x020000, &be(&[1]));
            let tfdt = full(b"tfdt", 0, 0, &be(&[t]));
            let first = if sync { 0x0200_0000 } else { NON_SYNC };
            // 3 samples, first-sample-flags present, durations from trex.
            let trun = full(b"trun", 0, 0x004, &be(&[3, first]));
            let moof = bx(b"moof", &bx(b"traf", &[tfhd, tfdt, trun].concat()));
            file.extend(moof);
            file.extend(bx(b"mdat", &[1, 2, 3]));
        }
        file.extend(bx(b"mfra", &[]));
        file
    }

    #[test]
    fn splits_init_and_fragments() {
        let f = sample_file();
        let s = split(&f).unwrap();
        assert_eq!(s.track.timescale, 12800);
        assert_eq!(s.track.codecs, "avc1.64001f");
        assert_eq!(s.fragments.len(), 2);
        assert_eq!(s.fragments[0].duration, 1536);
        assert_eq!(s.fragments[1].decode_time, 51200);
        assert!(s.fragments[0].starts_with_sync);
        assert!(!s.fragments[1].starts_with_sync);
        assert_eq!(s.fragments[0].bytes.end, s.fragments[1].bytes.start);
        assert_eq!(&f[s.init.end..s.init.end + 8][4..], b"moof");
    }

    #[test]
    fn decode_times_are_rewritten_in_place() {
        let f = sample_file();
        let s = split(&f).unwrap();
        let mut frag = f[s.fragments[1].bytes.clone()].to_vec();
        set_decode_time(&mut frag, 7777).unwrap();
        let mut whole = f[..s.init.end].to_vec();
        whole.extend_from_slice(&frag);
        assert_eq!(split(&whole).unwrap().fragments[0].decode_time, 7777);
        assert!(set_decode_time(&mut frag, u64::MAX).is_err(), "version 0 tfdt holds 32 bits");
    }

    #[test]
    fn composition_offsets_shift_to_signed() {
        let f = sample_file();
        let s = split(&f).unwrap();
        // Rebuild the second fragment with per-sample composition offsets 2, 5, 1.
        let tfhd = full(b"tfhd", 0, 0x020000, &be(&[1]));
        let tfdt = full(b"tfdt", 0, 0, &be(&[0]));
        let trun = full(b"trun", 0, 0x800, &be(&[3, 1024, 2560, 512]));
        let mut frag = bx(b"moof", &bx(b"traf", &[tfhd, tfdt, trun].concat()));
        frag.extend(bx(b"mdat", &[1, 2, 3]));
        assert_eq!(first_composition_offset(&frag).unwrap(), 1024);
        shift_composition_offsets(&mut frag, 1024).unwrap();
        assert_eq!(first_composition_offset(&frag).unwrap(), 0);
        let mut again = frag.clone();
        shift_composition_offsets(&mut again, 0).unwrap();
        assert_eq!(again, frag);
        let tail: Vec<u8> = frag[frag.len() - 11 - 12..frag.len() - 11].to_vec();
        assert_eq!(tail, [0i32, 1536, -512].iter().flat_map(|x| x.to_be_bytes()).collect::<Vec<u8>>());
        assert!(s.fragments.len() == 2);
    }

    #[test]
    fn hevc_and_av1_codec_strings() {
        // Main profile, compatibility flags 0x60000000, level 3.1, progressive+frame-only constraints.
        let hvcc = [1, 0x01, 0x60, 0, 0, 0, 0xb0, 0, 0, 0, 0, 0, 93];
        assert_eq!(hevc_codecs("hvc1", &hvcc).unwrap(), "hvc1.1.6.L93.B0");
        assert_eq!(av1_codecs(&[0x81, 0x08, 0x0c, 0]).unwrap(), "av01.0.08M.08");
        assert_eq!(av1_codecs(&[0x81, 0x2d, 0xcc, 0]).unwrap(), "av01.1.13H.10");
        assert!(hevc_codecs("hvc1", &[1, 2]).is_err());
    }

    #[test]
    fn rejects_truncation_and_garbage() {
        let f = sample_file();
        assert!(split(&f[..f.len() - 5]).is_err());
        assert!(split(b"not an mp4 file at all").is_err());
        assert!(split(&[]).is_err());
    }
}
