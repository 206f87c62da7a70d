//! Torn tails and flipped bits, checked exactly: what recovery keeps, what `verify`
//! reports, and what reads return.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

use std::path::{Path, PathBuf};

use hifi_log::durable::{self, DurableEnd};
use hifi_log::quarantine::{self, OnCorruption};
use hifi_log::segment::SEGMENT_HEADER_BYTES;
use hifi_log::verify::{dump, verify_dir, Problem};
use hifi_log::{Log, LogConfig, LogError, LogStats, ReadLimits, Record};
use rand::{Rng, SeedableRng};
use support::*;

const RECORDS: u64 = 120;

/// A log with one topic-partition over several segments; returns the records.
async fn build(dir: &Path) -> Vec<Record> {
    let log = open(dir, small_segments()).await;
    topic(&log, "t", 1).await;
    let recs: Vec<Record> = (0..RECORDS).map(record).collect();
    for r in &recs {
        log.append("t", 0, vec![r.clone()]).await.unwrap();
    }
    log.close().await;
    recs
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut s: Vec<PathBuf> = std::fs::read_dir(dir.join("topics/t/0"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    s.sort();
    s
}

fn base_of(seg: &Path) -> u64 {
    seg.file_stem().unwrap().to_str().unwrap().parse().unwrap()
}

/// Byte positions where each record of the segment starting at `base` ends.
fn frame_ends(recs: &[Record], base: u64, upto: u64) -> Vec<u64> {
    let mut pos = SEGMENT_HEADER_BYTES;
    (base..upto)
        .map(|i| {
            pos += recs[i as usize].frame_bytes() as u64;
            pos
        })
        .collect()
}

fn copy_dir(from: &Path, to: &Path) {
    for e in walk(from) {
        let rel = e.strip_prefix(from).unwrap();
        let dest = to.join(rel);
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(&e, &dest).unwrap();
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else if p.file_name().unwrap() != "hifi.lock" {
            out.push(p);
        }
    }
    out
}

/// How a crash leaves the end of the active segment.
#[derive(Debug, Clone, Copy)]
enum Tear {
    /// The file ends at the cut (a write that grew the file, cut short).
    Truncated,
    /// Zeroes from the cut to the end of the file (a write into preallocated space whose
    /// later pages never reached the disk).
    Zeroed,
}

fn tear(seg: &Path, cut: u64, how: Tear) {
    let file = std::fs::OpenOptions::new().write(true).open(seg).unwrap();
    match how {
        Tear::Truncated => file.set_len(cut).unwrap(),
        Tear::Zeroed => {
            let len = file.metadata().unwrap().len();
            let zeroes = vec![0u8; len.saturating_sub(cut) as usize];
            std::os::unix::fs::FileExt::write_all_at(&file, &zeroes, cut).unwrap();
        }
    }
}

#[tokio::test]
async fn a_torn_tail_anywhere_is_cut_back_to_the_last_whole_record() {
    let pristine = tempfile::tempdir().unwrap();
    let recs = build(pristine.path()).await;
    let last = segments(pristine.path()).pop().unwrap();
    let base = base_of(&last);
    let ends = frame_ends(&recs, base, RECORDS);
    let bytes = std::fs::read(&last).unwrap();
    let len = *ends.last().unwrap();
    assert!(bytes.len() as u64 > len, "the writer preallocated space");
    assert!(
        bytes[len as usize..].iter().all(|&b| b == 0),
        "preallocated space is zeroes"
    );

    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut cuts: Vec<u64> = (0..25)
        .map(|_| rng.gen_range(SEGMENT_HEADER_BYTES..len))
        .collect();
    cuts.extend([
        0,
        5,
        SEGMENT_HEADER_BYTES,
        ends[0],
        ends[0] + 1,
        len - 1,
        len,
    ]);
    // Zeroes never reach the header: it is durable before any space is preallocated.
    let tears = cuts.into_iter().flat_map(|c| {
        [(c, Tear::Truncated), (c, Tear::Zeroed)]
            .into_iter()
            .filter(|&(c, how)| matches!(how, Tear::Truncated) || c >= SEGMENT_HEADER_BYTES)
    });
    for (cut, how) in tears {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(pristine.path(), dir.path());
        let seg = dir.path().join(last.strip_prefix(pristine.path()).unwrap());
        tear(&seg, cut, how);
        // These bytes were written after the last durable point: a real torn tail.
        nothing_durable_since(dir.path(), base);
        let label = format!("cut {cut} {how:?}");
        let whole = ends.iter().filter(|&&e| e <= cut).count() as u64;
        let on_boundary = cut == SEGMENT_HEADER_BYTES || ends.contains(&cut);

        let report = &verify_dir(dir.path(), 1 << 20).unwrap()[0];
        assert_eq!(report.records, base + whole, "{label}");
        match (on_boundary, report.problems.as_slice()) {
            (true, []) => {}
            (false, [Problem::TornTail { .. }]) => {}
            other => panic!("{label}: unexpected verify result {other:?}"),
        }

        let log = open(dir.path(), small_segments()).await;
        let got = read_all(&log, "t", 0).await;
        assert_eq!(got.len() as u64, base + whole, "{label}");
        for r in &got {
            assert_eq!(r.record, recs[r.offset as usize]);
        }
        let torn = LogStats::get(&log.stats().torn_tails_total);
        assert_eq!(
            torn,
            u64::from(!on_boundary && cut >= SEGMENT_HEADER_BYTES),
            "{label}"
        );
        // Appending continues right after the last good record, and the file is clean.
        assert_eq!(
            log.append("t", 0, vec![record(500)]).await.unwrap()[0],
            base + whole
        );
        log.close().await;
        drop(log);
        assert!(
            verify_dir(dir.path(), 1 << 20).unwrap()[0]
                .problems
                .is_empty(),
            "{label}"
        );
    }
}

fn flip(path: &Path, pos: u64) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[pos as usize] ^= 0x20;
    std::fs::write(path, bytes).unwrap();
}

/// The partition directory of topic `t`, partition 0.
fn part_dir(dir: &Path) -> PathBuf {
    dir.join("topics/t/0")
}

/// Says that nothing of the segment starting at `base` was made durable: its bytes were
/// all written after the last durable point (what a real crash mid-write leaves).
fn nothing_durable_since(dir: &Path, base: u64) {
    durable::write(
        &part_dir(dir),
        DurableEnd {
            base,
            bytes: SEGMENT_HEADER_BYTES,
            next_offset: base,
        },
    )
    .unwrap();
}

#[tokio::test]
async fn a_flipped_bit_in_the_last_acknowledged_record_is_quarantined_never_cut_nor_reused() {
    let dir = tempfile::tempdir().unwrap();
    let recs = build(dir.path()).await;
    let last = segments(dir.path()).pop().unwrap();
    let base = base_of(&last);
    let ends = frame_ends(&recs, base, RECORDS);
    let last_frame_start = ends[ends.len() - 2];
    flip(&last, last_frame_start + 20);
    let before = tempfile::tempdir().unwrap();
    copy_dir(dir.path(), before.path());

    // The record was made durable (acknowledged): damage, not a torn tail.
    let problems = &verify_dir(dir.path(), 1 << 20).unwrap()[0].problems;
    assert!(
        matches!(problems.as_slice(), [Problem::Corrupt { position, offset, .. }]
            if *position == last_frame_start && *offset == RECORDS - 1),
        "{problems:?}"
    );
    let log = open(dir.path(), small_segments()).await;
    assert_eq!(
        log.offsets("t", 0).await.unwrap().end,
        RECORDS,
        "nothing cut"
    );
    let got = read_all_skipping(&log, "t", 0).await;
    assert_eq!(
        got.len() as u64,
        RECORDS - 1,
        "the damaged record is never returned"
    );
    assert!(got.iter().all(|r| r.record == recs[r.offset as usize]));
    // A group that read everything before it cannot commit past it (there is no record
    // after it yet); it has read through it all the same.
    log.commit_many("g", "t", &[(0, RECORDS - 1)])
        .await
        .unwrap();
    assert_eq!(
        hifi_log::read_through(&log, "g", "t", 0).await.unwrap(),
        Some(RECORDS),
        "a position inside a quarantined region at the end is past it"
    );
    assert_eq!(
        hifi_log::read_through(&log, "other", "t", 0).await.unwrap(),
        None
    );
    assert_eq!(
        log.append("t", 0, vec![record(500)]).await.unwrap()[0],
        RECORDS,
        "its offset is never given to another record"
    );
    let after = log
        .read("t", 0, RECORDS - 1, ReadLimits::default())
        .await
        .unwrap();
    assert_eq!(
        after[0].offset, RECORDS,
        "readers skip the quarantined record"
    );
    assert_eq!(after[0].record, record(500));
    assert_eq!(LogStats::get(&log.stats().quarantined_regions_total), 1);
    log.close().await;
    let q = quarantine::list(dir.path()).unwrap();
    assert_eq!(q.len(), 1, "{q:?}");
    assert_eq!(
        (q[0].first_offset, q[0].next_offset),
        (RECORDS - 1, RECORDS)
    );
    assert_eq!(q[0].position, last_frame_start);
    let copied = std::fs::read(
        part_dir(dir.path())
            .join("quarantine")
            .join(format!("{base:020}-{last_frame_start:020}.bin")),
    )
    .unwrap();
    assert_eq!(copied.len() as u64, q[0].copied_bytes);
    assert!(copied.len() as u64 >= ends[ends.len() - 1] - last_frame_start);

    // Without the durable-end checkpoint (a data directory from before it), the same
    // damage is taken for a torn tail: the checkpoint is what tells them apart.
    std::fs::remove_file(part_dir(before.path()).join(durable::FILE_NAME)).unwrap();
    let log = open(before.path(), small_segments()).await;
    assert_eq!(log.offsets("t", 0).await.unwrap().end, RECORDS - 1);
}

#[tokio::test]
async fn a_flipped_bit_in_the_middle_of_the_active_segment_is_skipped_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let recs = build(dir.path()).await;
    let stopping = tempfile::tempdir().unwrap();
    let last = segments(dir.path()).pop().unwrap();
    let base = base_of(&last);
    let ends = frame_ends(&recs, base, RECORDS);
    let victim = base + 3; // the fourth record of the last segment
    let victim_start = ends[2];
    flip(&last, victim_start + 30);
    copy_dir(dir.path(), stopping.path());

    let report = &verify_dir(dir.path(), 1 << 20).unwrap()[0];
    match report.problems.as_slice() {
        [Problem::Corrupt {
            position,
            offset,
            resumes_at: Some((rpos, roff)),
            ..
        }] => {
            assert_eq!((*position, *offset), (victim_start, victim));
            assert_eq!((*rpos, *roff), (ends[3], victim + 1));
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(report.records, RECORDS - 1);

    let log = open(dir.path(), small_segments()).await;
    assert_eq!(
        log.offsets("t", 0).await.unwrap().end,
        RECORDS,
        "nothing truncated"
    );
    // A reader gets every record but the damaged one, with no error.
    let got = read_all_skipping(&log, "t", 0).await;
    let offsets: Vec<u64> = got.iter().map(|r| r.offset).collect();
    let expected: Vec<u64> = (0..RECORDS).filter(|&o| o != victim).collect();
    assert_eq!(offsets, expected);
    let at = log
        .read("t", 0, victim, ReadLimits::default())
        .await
        .unwrap();
    assert_eq!(at[0].offset, victim + 1);
    assert_eq!(at[0].record, recs[victim as usize + 1]);
    assert_eq!(LogStats::get(&log.stats().quarantined_regions_total), 1);
    assert_eq!(LogStats::get(&log.stats().quarantined_records_total), 1);
    assert_eq!(
        log.append("t", 0, vec![record(1)]).await.unwrap()[0],
        RECORDS
    );
    log.close().await;

    // engine.on_corruption = "stop": readers stop at the damage, as before quarantine.
    let config = LogConfig {
        on_corruption: OnCorruption::Stop,
        ..small_segments()
    };
    let log = open(stopping.path(), config).await;
    let got = log.read("t", 0, base, ReadLimits::default()).await.unwrap();
    assert_eq!(
        got.iter().map(|r| r.offset).collect::<Vec<_>>(),
        (base..victim).collect::<Vec<_>>()
    );
    let err = log
        .read("t", 0, victim, ReadLimits::default())
        .await
        .unwrap_err();
    match &err {
        LogError::Corruption {
            topic,
            partition,
            segment,
            offset,
            position,
            ..
        } => {
            assert_eq!(
                (topic.as_str(), *partition, *offset, *position),
                ("t", 0, victim, victim_start)
            );
            assert!(segment.ends_with(last.file_name().unwrap()));
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(LogStats::get(&log.stats().corruptions_total), 1);
    assert_eq!(LogStats::get(&log.stats().quarantined_regions_total), 0);
}

#[tokio::test]
async fn a_flipped_bit_in_a_sealed_segment_is_quarantined_on_read_and_reported_by_verify() {
    let dir = tempfile::tempdir().unwrap();
    let recs = build(dir.path()).await;
    let first = segments(dir.path()).remove(0);
    let ends = frame_ends(&recs, 0, 5);
    flip(&first, ends[1] + 12); // inside record 2

    let report = &verify_dir(dir.path(), 1 << 20).unwrap()[0];
    assert!(
        matches!(
            report.problems.as_slice(),
            [Problem::Corrupt { offset: 2, .. }]
        ),
        "{:?}",
        report.problems
    );
    assert!(report.problems[0].to_string().contains("CORRUPTION"));

    let mut dumped = Vec::new();
    let err = dump(dir.path(), "t", 0, 0, u64::MAX, 1 << 20, |r| {
        dumped.push(r.offset)
    })
    .unwrap_err();
    assert_eq!(dumped, vec![0, 1], "dump prints only what it verified");
    assert!(err.to_string().contains("offset 2"), "{err}");

    // The sealed segment's index files are trusted at open: the damage is found by the
    // first read that meets it, then quarantined and skipped.
    let log = open(dir.path(), small_segments()).await;
    let got = log.read("t", 0, 0, ReadLimits::default()).await.unwrap();
    assert_eq!(got.iter().map(|r| r.offset).collect::<Vec<_>>(), [0, 1]);
    let next = log.read("t", 0, 2, ReadLimits::default()).await.unwrap();
    assert_eq!(next[0].offset, 3);
    assert_eq!(next[0].record, recs[3]);
    let all = read_all_skipping(&log, "t", 0).await;
    assert_eq!(all.len() as u64, RECORDS - 1);
    assert_eq!(LogStats::get(&log.stats().quarantined_regions_total), 1);
    log.close().await;
    drop(log);
    let q = quarantine::list(dir.path()).unwrap();
    assert_eq!((q[0].first_offset, q[0].next_offset), (2, 3), "{q:?}");
    // Found again at the next start (from the files, not from the quarantine folder).
    let log = open(dir.path(), small_segments()).await;
    assert_eq!(
        read_all_skipping(&log, "t", 0).await.len() as u64,
        RECORDS - 1
    );
}

/// Cuts below the durable end (acknowledged data gone) are never cut further, and their
/// offsets are never reused.
#[tokio::test]
async fn damage_below_the_durable_end_is_never_cut_and_its_offsets_never_reused() {
    let pristine = tempfile::tempdir().unwrap();
    let recs = build(pristine.path()).await;
    let last = segments(pristine.path()).pop().unwrap();
    let base = base_of(&last);
    let ends = frame_ends(&recs, base, RECORDS);
    for (cut, how) in [
        (ends[0] + 3, Tear::Truncated),
        (ends[2], Tear::Zeroed),
        (ends[ends.len() - 2] + 1, Tear::Zeroed),
        (ends[ends.len() - 1] - 1, Tear::Truncated),
    ] {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(pristine.path(), dir.path());
        let seg = dir.path().join(last.strip_prefix(pristine.path()).unwrap());
        tear(&seg, cut, how);
        let label = format!("cut {cut} {how:?}");
        let whole = ends.iter().filter(|&&e| e <= cut).count() as u64;
        let problems = &verify_dir(dir.path(), 1 << 20).unwrap()[0].problems;
        assert!(
            problems.iter().all(|p| p.is_corruption()) && !problems.is_empty(),
            "{label}: {problems:?}"
        );
        let log = open(dir.path(), small_segments()).await;
        assert_eq!(log.offsets("t", 0).await.unwrap().end, RECORDS, "{label}");
        let got = read_all_skipping(&log, "t", 0).await;
        assert_eq!(got.len() as u64, base + whole, "{label}");
        assert!(
            got.iter().all(|r| r.record == recs[r.offset as usize]),
            "{label}"
        );
        assert_eq!(
            log.append("t", 0, vec![record(500)]).await.unwrap()[0],
            RECORDS,
            "{label}"
        );
        let next = log
            .read("t", 0, base + whole, ReadLimits::default())
            .await
            .unwrap();
        assert_eq!(next[0].offset, RECORDS, "{label}: readers skip the hole");
        log.close().await;
    }
}

#[tokio::test]
async fn verify_and_dump_on_a_clean_directory() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path()).await;
    let reports = verify_dir(dir.path(), 1 << 20).unwrap();
    assert_eq!(reports.len(), 1);
    let r = &reports[0];
    assert_eq!(
        (r.records, r.first_offset, r.last_offset),
        (RECORDS, Some(0), Some(RECORDS - 1))
    );
    assert!(r.problems.is_empty());
    let mut seen = Vec::new();
    assert_eq!(
        dump(dir.path(), "t", 0, 100, 5, 1 << 20, |r| seen.push(r.offset)).unwrap(),
        5
    );
    assert_eq!(seen, vec![100, 101, 102, 103, 104]);
}

#[tokio::test]
async fn sealed_segments_end_at_their_last_record_and_only_the_active_one_has_zeroes() {
    let dir = tempfile::tempdir().unwrap();
    let recs = build(dir.path()).await;
    let segs = segments(dir.path());
    assert!(segs.len() > 2);
    let data_end = |i: usize| {
        let upto = segs.get(i + 1).map_or(RECORDS, |s| base_of(s));
        *frame_ends(&recs, base_of(&segs[i]), upto).last().unwrap()
    };
    let len = |p: &Path| std::fs::metadata(p).unwrap().len();
    let last = segs.len() - 1;
    for (i, seg) in segs.iter().enumerate().take(last) {
        assert_eq!(len(seg), data_end(i), "sealed segment {i} has no zeroes");
    }
    assert!(len(&segs[last]) > data_end(last));

    // Zeroes at the end of a sealed segment are not preallocated space (the roll cut that
    // off): they stand where records belong, and are reported, never cut.
    let file = std::fs::OpenOptions::new()
        .append(true)
        .open(&segs[0])
        .unwrap();
    std::io::Write::write_all(&mut &file, &[0u8; 1000]).unwrap();
    drop(file);
    let problems = &verify_dir(dir.path(), 1 << 20).unwrap()[0].problems;
    assert!(
        matches!(problems.as_slice(), [Problem::Corrupt { position, .. }] if *position == data_end(0)),
        "{problems:?}"
    );
    let log = open(dir.path(), small_segments()).await;
    assert_eq!(LogStats::get(&log.stats().damaged_regions_total), 1);
    assert_eq!(len(&segs[0]), data_end(0) + 1000, "nothing cut");
    let got = read_all(&log, "t", 0).await;
    assert_eq!(got.len() as u64, RECORDS);
    assert!(got.iter().all(|r| r.record == recs[r.offset as usize]));

    // The active segment's zeroes are appended into: the file does not grow.
    let active = len(&segs[last]);
    let next = record(RECORDS);
    assert!(data_end(last) + next.frame_bytes() as u64 <= active);
    assert_eq!(log.append("t", 0, vec![next]).await.unwrap()[0], RECORDS);
    assert_eq!(len(&segs[last]), active);
    log.close().await;
    drop(log);
    assert_eq!(
        verify_dir(dir.path(), 1 << 20).unwrap()[0].problems.len(),
        1
    );
}
