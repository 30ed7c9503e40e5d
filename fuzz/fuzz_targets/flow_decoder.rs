//! A hostile peer's data direction: any byte stream, parsed into frames and fed to a flow
//! decoder whose store holds a few chunks for that peer (so references, parts and deltas can
//! hit). The decoder never panics: every hostile input ends in delivered bytes or a named error.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, OnceLock};
use strait_chunk::ChunkHasher;
use strait_store::{PeerSlot, Store, StoreConfig};

const KEY: [u8; 32] = [5; 32];
const WINDOW: u64 = 1 << 20;

fn store() -> &'static (Arc<Store>, PeerSlot) {
    static S: OnceLock<(Arc<Store>, PeerSlot)> = OnceLock::new();
    S.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("strait-fuzz-flow-{}", std::process::id()));
        let store = Arc::new(Store::open(StoreConfig::new(&dir, 16 << 20, KEY)).unwrap());
        let peer = store.peer_slot("edge").unwrap();
        let hasher = ChunkHasher::new(KEY);
        for seed in 0..4u8 {
            let chunk: Vec<u8> = (0..4096u32).map(|i| (i as u8) ^ seed).collect();
            store.put(&hasher.id(&chunk).0, &chunk, peer).unwrap();
        }
        (store, peer)
    })
}

fuzz_target!(|data: &[u8]| {
    let (store, peer) = store();
    let stats = Arc::new(strait_admin::RouteStats::default());
    let mut dec = strait_dedup::FlowDecoder::new(
        ChunkHasher::new(KEY),
        store.clone(),
        *peer,
        WINDOW,
        stats,
    );
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
