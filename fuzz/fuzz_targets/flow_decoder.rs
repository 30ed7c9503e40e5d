//! A hostile peer's data direction: any byte stream, parsed into frames and fed to a flow
//! decoder whose store holds a few chunks for that peer (so references, parts and deltas can
//! hit). The decoder never panics: every hostile input ends in delivered bytes or a named error.
//! Each input gets an in-memory store of its own, so runs are reproducible (and touch no disk).
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::sync::Arc;
use strait_chunk::ChunkHasher;
use strait_store::{PeerSlot, Store};

const KEY: [u8; 32] = [5; 32];
const WINDOW: u64 = 1 << 20;

/// A fresh store per input, so a run depends on its input alone (a store shared across inputs
/// made crashes unreproducible: what one input stored changed what the next one hit).
fn store() -> (Arc<Store>, PeerSlot) {
    let store = Arc::new(Store::open_in_memory(16 << 20, KEY).expect("open store"));
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
    let (store, peer) = store();
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
