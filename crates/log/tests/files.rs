//! Open file descriptors stay bounded however many segments a log holds: sealed
//! segments are opened when read, through a cache of `open_segment_files_max` files.
//! (A test binary of its own: it counts this process's descriptors.)

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod support;

use hifi_log::{Log, LogConfig};
use support::*;

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[tokio::test]
async fn many_segments_hold_few_file_descriptors() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        open_segment_files_max: 4,
        ..small_segments()
    };
    {
        let log = open(dir.path(), config.clone()).await;
        topic(&log, "t", 1).await;
        for i in 0..1500 {
            log.append("t", 0, vec![record(i)]).await.unwrap();
        }
        log.close().await;
    }
    let segments = std::fs::read_dir(dir.path().join("topics/t/0"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "log")
        })
        .count();
    assert!(segments > 40, "the test needs many segments: {segments}");
    let before = open_fds();
    let log = open(dir.path(), config).await;
    let all = read_all(&log, "t", 0).await;
    assert_eq!(all.len(), 1500);
    assert!(all.iter().all(|r| r.record == record(r.offset)));
    let during = open_fds();
    // The lock file, the active segment, the durable-end file, the group store, the
    // cache's 4 files, and a little slack for the runtime.
    assert!(
        during <= before + 12,
        "{segments} segments took {} descriptors",
        during - before
    );
}
