//! A hostile peer's data direction: any byte stream, parsed into frames and fed to a flow
//! decoder whose store holds a few chunks for that peer (so references, parts and deltas can
//! hit). The decoder never panics: every hostile input ends in delivered bytes or a named error.
//! Each input gets a store of its own in a fresh temporary directory, so runs are reproducible.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::sync::Arc;
use strait_chunk::ChunkHasher;
use strait_store::{PeerSlot, Store, StoreConfig};

const KEY: [u8; 32] = [5; 32];
const WINDOW: u64 = 1 << 20;

/// A fresh store per input, so a run depends on its input alone (a store shared across inputs
/// made crashes unreproducible: what one input stored changed what the next one hit).
fn store(dir: &std::path::Path) -> (Arc<Store>, PeerSlot) {
    let store = Arc::new(Store::open(StoreConfig::new(dir, 16 << 20, KEY)).expect("open store"));
    let peer = store.peer_slot("edge").expect("peer slot");
    let hasher = ChunkHasher::new(KEY);
    for seed in 0..4u8 {
        let chunk: Vec<u8> = (0..4096u32).map(|i| (i as u8) ^ seed).collect();
        store
            .put(&hasher.id(&chunk).0, &chunk, peer)
            .expect("seed chunk");
    }
    (store, peer)
}

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().expect("temp dir");
    let (store, peer) = store(dir.path());
    let stats = Arc::new(strait_admin::RouteStats::default());
    let mut dec = strait_dedup::FlowDecoder::new(ChunkHasher::new(KEY), store, peer, WINDOW, stats);
    let mut frames = strait_wire::FrameDecoder::new();
    frames.extend(data);
    let mut wants = Vec::new();
    while let Ok(Some((f, _))) = frames.next_frame() {
        if dec.on_frame(f, &mut wants).is_err() {
            break;
        }
        while dec.pop_ready().is_some() {}
        let _ = dec.take_ack();
    }
});
