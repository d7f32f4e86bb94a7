//! What a queued message costs the in-memory broker beyond its payload
//! (issue 5's target: under 32 bytes for a 64-byte message), counted by a
//! global allocator that adds malloc's 16-byte chunk header per block.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use bytes::Bytes;
use dchan::broker::{Broker, Delivery, MemoryBroker, TopicConfig, Wait};

/// The system allocator, counting live bytes (plus a chunk header each).
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);
const HEADER: isize = 16;

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize + HEADER, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize + HEADER, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new as isize - layout.size() as isize, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// A million in release builds, as the target says; fewer in debug ones.
const N: usize = if cfg!(debug_assertions) {
    200_000
} else {
    1_000_000
};
const SIZE: usize = 64;

#[tokio::test(flavor = "current_thread")]
async fn a_queued_small_message_costs_under_32_bytes() {
    let broker = MemoryBroker::new();
    let config = TopicConfig {
        capacity: N as u64,
        ..TopicConfig::default()
    };
    broker.create("t", config).unwrap();
    broker.offset("t", "").unwrap();
    // Each payload arrives the way the server gets it: its own slice of a
    // received frame (here: a frame of its own, 23 header bytes + data).
    let before = LIVE.load(Ordering::Relaxed);
    for i in 0..N {
        let mut frame = vec![b'h'; 23 + SIZE];
        frame[23..31].copy_from_slice(&(i as u64).to_le_bytes());
        let data = Bytes::from(frame).slice(23..);
        broker.push("t", data, Wait::NonBlock).await.unwrap();
    }
    let used = LIVE.load(Ordering::Relaxed) - before;
    let per = used as f64 / N as f64 - SIZE as f64;
    eprintln!("{N} queued {SIZE}-byte messages: {per:.1} bytes each beyond the payload");
    // Everything comes back intact, in order.
    for i in 0..N {
        let d = broker.pull("t", "", Wait::NonBlock).await.unwrap().unwrap();
        assert_eq!(d.data().len(), SIZE);
        assert_eq!(d.data()[..8], (i as u64).to_le_bytes());
        d.ack();
    }
    assert!(per < 32.0, "{per:.1} bytes per message");
}
