//! Accuracy of the emulator on real packets between two namespaces. Needs root, /dev/net/tun and
//! `ip`; elsewhere every test prints `skipped: <reason>` and returns.
//!
//! Tests hold one lock so timing measurements never share the 2 cores with each other.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use strait_wanem::model::{Fate, LinkModel};
use strait_wanem::{skip_reason, GilbertElliott, LinkParams, QueueLimit, Wan, WanConfig};

static SERIAL: Mutex<()> = Mutex::new(());

/// The lock, or `None` after printing why the test is skipped.
fn setup(test: &str) -> Option<MutexGuard<'static, ()>> {
    if let Some(reason) = skip_reason() {
        // Straight to fd 2, past libtest's capture: a skip must never be silent.
        let _ = writeln!(std::io::stderr(), "skipped: {test}: {reason}");
        return None;
    }
    Some(SERIAL.lock().unwrap_or_else(|p| p.into_inner()))
}

fn set_rcvbuf(fd: &impl AsRawFd, bytes: i32) {
    // SAFETY: valid fd and a c_int option value.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&bytes as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0);
}

/// A UDP socket in site A and one in site B (created inside the namespaces, usable anywhere).
fn udp_pair(wan: &Wan) -> (UdpSocket, UdpSocket) {
    let (a, b) = (wan.addr_a(), wan.addr_b());
    let sa = wan.enter_a(|| UdpSocket::bind((a, 0))).unwrap().unwrap();
    let sb = wan.enter_b(|| UdpSocket::bind((b, 0))).unwrap().unwrap();
    for s in [&sa, &sb] {
        set_rcvbuf(s, 16 << 20);
        s.set_read_timeout(Some(Duration::from_millis(400)))
            .unwrap();
    }
    (sa, sb)
}

/// Sends `n` sequence-numbered datagrams from `tx` to `to`, never more than `window` ahead of
/// what the emulator has read (so no packet is lost before the meter), while `rx` collects
/// sequence numbers until the link goes quiet. Returns the received sequence numbers in order.
fn one_way_flood(
    wan: &Wan,
    a_to_b: bool,
    tx: &UdpSocket,
    rx: &UdpSocket,
    n: u32,
    payload: usize,
) -> Vec<u32> {
    let to = rx.local_addr().unwrap();
    let window = 1000;
    std::thread::scope(|s| {
        let receiver = s.spawn(|| {
            let mut got = Vec::with_capacity(n as usize);
            let mut buf = [0u8; 2048];
            // Ends when the link has been quiet for the read timeout.
            while let Ok(len) = rx.recv(&mut buf) {
                assert!(len >= 4);
                got.push(u32::from_be_bytes(buf[..4].try_into().unwrap()));
            }
            got
        });
        let mut msg = vec![0u8; payload.max(4)];
        let offered = |wan: &Wan| {
            let st = wan.stats();
            if a_to_b {
                st.a_to_b.packets
            } else {
                st.b_to_a.packets
            }
        };
        let base = offered(wan);
        for i in 0..n {
            while u64::from(i) > offered(wan) - base + window {
                std::thread::yield_now();
            }
            msg[..4].copy_from_slice(&i.to_be_bytes());
            tx.send_to(&msg, to).unwrap();
        }
        receiver.join().unwrap()
    })
}

/// Median round trip of `count` sequential echoes from site A to a UDP echo in site B; lost
/// probes are skipped.
fn echo_rtts(wan: &Wan, count: usize) -> Vec<Duration> {
    let (ca, sb) = udp_pair(wan);
    let server_addr = sb.local_addr().unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut buf = [0u8; 64];
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok((n, from)) = sb.recv_from(&mut buf) {
                    sb.send_to(&buf[..n], from).unwrap();
                }
            }
        });
        let mut rtts = Vec::new();
        let mut buf = [0u8; 64];
        for i in 0..count as u32 {
            let t0 = Instant::now();
            ca.send_to(&i.to_be_bytes(), server_addr).unwrap();
            // Match the reply to this probe; a lost probe or reply times out and is skipped.
            while let Ok(n) = ca.recv(&mut buf) {
                if n == 4 && buf[..4] == i.to_be_bytes() {
                    rtts.push(t0.elapsed());
                    break;
                }
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        rtts
    })
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Bulk TCP from site A to site B for `bytes`; returns goodput in bit/s measured at the receiver
/// after the first `skip` bytes (leaving slow start out of the figure).
fn tcp_goodput(wan: &Wan, bytes: usize, skip: usize) -> f64 {
    let b = wan.addr_b();
    let listener = wan.enter_b(|| TcpListener::bind((b, 0))).unwrap().unwrap();
    let to: SocketAddr = listener.local_addr().unwrap();
    let mut client = wan.enter_a(|| TcpStream::connect(to)).unwrap().unwrap();
    let (mut server, _) = listener.accept().unwrap();
    std::thread::scope(|s| {
        s.spawn(move || {
            let chunk = vec![0x5au8; 256 << 10];
            let mut left = bytes;
            while left > 0 {
                let n = left.min(chunk.len());
                client.write_all(&chunk[..n]).unwrap();
                left -= n;
            }
        });
        let mut buf = vec![0u8; 256 << 10];
        let mut got = 0usize;
        let mut t_skip = None;
        while got < bytes {
            let n = server.read(&mut buf).unwrap();
            assert!(n > 0, "connection closed after {got} bytes");
            got += n;
            if t_skip.is_none() && got >= skip {
                t_skip = Some((Instant::now(), got));
            }
        }
        let (t0, at) = t_skip.unwrap();
        (got - at) as f64 * 8.0 / t0.elapsed().as_secs_f64()
    })
}

#[test]
fn echo_rtt_is_within_5_percent_of_twice_the_one_way_delay() {
    let Some(_g) = setup("echo_rtt") else { return };
    let wan = Wan::start(WanConfig::symmetric(LinkParams::with_delay(
        Duration::from_millis(50),
    )))
    .unwrap();
    let rtts = echo_rtts(&wan, 15);
    assert_eq!(rtts.len(), 15, "no loss configured");
    let med = median(rtts.clone());
    println!("configured RTT 100 ms, median {med:?}, all {rtts:?}");
    let ms = med.as_secs_f64() * 1e3;
    assert!(
        (95.0..=105.0).contains(&ms),
        "median RTT {ms} ms outside 100 ms ± 5%"
    );
    // The configured delay is a floor: no probe comes back early.
    assert!(
        rtts.iter().all(|r| *r >= Duration::from_millis(100)),
        "{rtts:?}"
    );
    let st = wan.stop();
    assert_eq!(st.a_to_b.delivered_packets, st.a_to_b.packets);
}

#[test]
fn tcp_on_a_lossless_100mbit_link_reaches_90_percent_with_cubic_and_bbr() {
    let Some(_g) = setup("tcp_100mbit") else {
        return;
    };
    for cc in ["cubic", "bbr"] {
        let link = LinkParams {
            delay: Duration::from_millis(10),
            rate_bps: Some(100_000_000),
            queue: QueueLimit::Millis(100),
            ..LinkParams::default()
        };
        let wan = Wan::start(WanConfig {
            congestion_control: Some(cc.into()),
            ..WanConfig::symmetric(link)
        })
        .unwrap();
        let in_ns = wan
            .enter_a(|| std::fs::read_to_string("/proc/sys/net/ipv4/tcp_congestion_control"))
            .unwrap()
            .unwrap();
        assert_eq!(in_ns.trim(), cc);
        let bps = tcp_goodput(&wan, 30 << 20, 4 << 20);
        let st = wan.stop();
        println!(
            "{cc}: TCP goodput {:.1} Mbit/s on 100 Mbit/s, RTT 20 ms; {st}",
            bps / 1e6
        );
        assert!(bps >= 90e6, "{cc}: {:.1} Mbit/s < 90", bps / 1e6);
        assert!(
            bps <= 100e6,
            "{cc}: {:.1} Mbit/s above the link rate",
            bps / 1e6
        );
    }
}

#[test]
fn unshaped_forwarder_ceiling_is_measured() {
    let Some(_g) = setup("ceiling") else { return };
    let wan = Wan::start(WanConfig::default()).unwrap();
    let bps = tcp_goodput(&wan, 400 << 20, 40 << 20);
    let st = wan.stop();
    println!(
        "unshaped forwarder ceiling: TCP {:.2} Gbit/s; {st}",
        bps / 1e9
    );
    assert_eq!(st.a_to_b.dropped(), 0, "{st}");
    assert!(bps > 300e6, "{:.2} Gbit/s", bps / 1e9);
}

#[test]
fn random_loss_of_100k_real_packets_is_within_0_2_points_and_the_meter_matches_the_receiver() {
    let Some(_g) = setup("random_loss") else {
        return;
    };
    let n = 100_000u32;
    let wan = Wan::start(WanConfig {
        a_to_b: LinkParams {
            loss: 0.01,
            ..LinkParams::default()
        },
        seed: 77,
        ..WanConfig::default()
    })
    .unwrap();
    let (sa, sb) = udp_pair(&wan);
    let got = one_way_flood(&wan, true, &sa, &sb, n, 32);
    let st = wan.stop();
    println!("{st}");
    assert_eq!(
        st.a_to_b.packets,
        u64::from(n),
        "every datagram reached the meter"
    );
    assert_eq!(st.a_to_b.bytes, u64::from(n) * (20 + 8 + 32));
    assert_eq!(st.a_to_b.delivered_packets, got.len() as u64);
    let loss = st.a_to_b.dropped_loss as f64 / f64::from(n);
    assert!((loss - 0.01).abs() <= 0.002, "measured loss {loss}");
    assert_eq!(
        st.a_to_b.dropped(),
        st.a_to_b.dropped_loss,
        "no other cause"
    );
}

#[test]
fn burst_losses_on_the_wire_are_exactly_the_seeded_gilbert_elliott_pattern() {
    let Some(_g) = setup("burst_loss") else {
        return;
    };
    let n = 50_000u32;
    let link = LinkParams {
        burst: Some(GilbertElliott {
            mean_loss: 0.02,
            mean_burst: 4.0,
        }),
        ..LinkParams::default()
    };
    let seed = 99;
    let wan = Wan::start(WanConfig {
        a_to_b: link.clone(),
        seed,
        ..WanConfig::default()
    })
    .unwrap();
    let (sa, sb) = udp_pair(&wan);
    let got: BTreeSet<u32> = one_way_flood(&wan, true, &sa, &sb, n, 32)
        .into_iter()
        .collect();
    let st = wan.stop();
    // Fates depend only on the seed and the packet index, so the model predicts the wire.
    let mut model = LinkModel::new(&link, seed, 0).unwrap();
    let expected: BTreeSet<u32> = (0..n)
        .filter(|i| matches!(model.admit(u64::from(*i), 60), Fate::Deliver { .. }))
        .collect();
    assert_eq!(got, expected);
    let mut bursts = Vec::new();
    let mut run = 0;
    for i in 0..n {
        if got.contains(&i) {
            if run > 0 {
                bursts.push(run);
            }
            run = 0;
        } else {
            run += 1;
        }
    }
    let mean = bursts.iter().sum::<u32>() as f64 / bursts.len() as f64;
    let loss = st.a_to_b.dropped_burst as f64 / f64::from(n);
    println!(
        "bursts {}, mean length {mean:.2} (configured 4), loss {loss:.4}",
        bursts.len()
    );
    assert!((mean - 4.0).abs() < 0.8, "mean burst {mean}");
    assert!((loss - 0.02).abs() < 0.006, "loss {loss}");
}

#[test]
fn directions_apply_their_own_delay_and_loss() {
    let Some(_g) = setup("directions") else {
        return;
    };
    let wan = Wan::start(WanConfig {
        a_to_b: LinkParams::with_delay(Duration::from_millis(10)),
        b_to_a: LinkParams {
            delay: Duration::from_millis(40),
            loss: 0.2,
            ..LinkParams::default()
        },
        seed: 3,
        ..WanConfig::default()
    })
    .unwrap();
    let med = median(echo_rtts(&wan, 10));
    let ms = med.as_secs_f64() * 1e3;
    assert!((47.5..=52.5).contains(&ms), "RTT {ms} ms, expected 50");
    let before = wan.stats();
    let (sa, sb) = udp_pair(&wan);
    let ab = one_way_flood(&wan, true, &sa, &sb, 5000, 100);
    let ba = one_way_flood(&wan, false, &sb, &sa, 5000, 100);
    let st = wan.stop().since(&before);
    println!("RTT {ms:.2} ms; {st}");
    assert_eq!(ab.len(), 5000, "A→B is lossless");
    assert_eq!(st.a_to_b.dropped(), 0);
    let loss = 1.0 - ba.len() as f64 / 5000.0;
    assert!((loss - 0.2).abs() < 0.03, "B→A loss {loss}");
    assert_eq!(st.b_to_a.dropped_loss, 5000 - ba.len() as u64);
}

#[test]
fn jitter_keeps_order_while_reordering_and_duplication_are_counted() {
    let Some(_g) = setup("jitter_reorder") else {
        return;
    };
    let wan = Wan::start(WanConfig {
        a_to_b: LinkParams {
            delay: Duration::from_millis(5),
            jitter: Duration::from_millis(3),
            ..LinkParams::default()
        },
        b_to_a: LinkParams {
            delay: Duration::from_millis(5),
            reorder: 0.05,
            reorder_delay: Duration::from_millis(3),
            duplicate: 0.05,
            ..LinkParams::default()
        },
        seed: 5,
        ..WanConfig::default()
    })
    .unwrap();
    let (sa, sb) = udp_pair(&wan);
    let ab = one_way_flood(&wan, true, &sa, &sb, 5000, 100);
    assert_eq!(
        ab,
        (0..5000).collect::<Vec<u32>>(),
        "jitter alone never reorders"
    );
    let ba = one_way_flood(&wan, false, &sb, &sa, 5000, 100);
    let st = wan.stop();
    // A packet is out of order when a later one arrived before it (its duplicate excluded).
    let mut max_seen = None;
    let mut out_of_order = 0;
    for &s in &ba {
        match max_seen {
            Some(m) if s < m => out_of_order += 1,
            Some(m) if s == m => {}
            _ => max_seen = Some(s),
        }
    }
    let dups = ba.len() - ba.iter().collect::<BTreeSet<_>>().len();
    println!("out of order {out_of_order}, duplicates {dups}; {st}");
    assert_eq!(dups as u64, st.b_to_a.duplicates);
    assert!((150..350).contains(&dups), "{dups}");
    assert!(st.b_to_a.reordered > 150, "{st}");
    assert!(
        out_of_order as u64 > st.b_to_a.reordered / 2,
        "{out_of_order} of {} held back were overtaken",
        st.b_to_a.reordered
    );
}

#[test]
fn rate_limit_delivers_the_configured_rate_and_drops_at_the_tail() {
    let Some(_g) = setup("rate_limit") else {
        return;
    };
    let rate = 20_000_000u64;
    let wan = Wan::start(WanConfig {
        a_to_b: LinkParams {
            rate_bps: Some(rate),
            queue: QueueLimit::Millis(20),
            ..LinkParams::default()
        },
        ..WanConfig::default()
    })
    .unwrap();
    let (sa, sb) = udp_pair(&wan);
    let to = sb.local_addr().unwrap();
    let payload = vec![0u8; 1472];
    // Offer ~2× the rate for one second (the sender is paced by wall time, not a sleep loop).
    let start = Instant::now();
    let mut sent = 0u64;
    let mut received_bytes = 0u64;
    let mut first_rx: Option<Instant> = None;
    let mut last_rx = start;
    sb.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 2048];
    while start.elapsed() < Duration::from_secs(1) {
        let due = (start.elapsed().as_secs_f64() * 2.0 * rate as f64 / 8.0 / 1500.0) as u64;
        while sent < due {
            sa.send_to(&payload, to).unwrap();
            sent += 1;
        }
        while let Ok(n) = sb.recv(&mut buf) {
            let now = Instant::now();
            if first_rx.is_none() {
                first_rx = Some(now);
            } else {
                received_bytes += (n + 28) as u64;
            }
            last_rx = now;
        }
        std::thread::yield_now();
    }
    let st = wan.stop();
    let measured = received_bytes as f64 * 8.0 / (last_rx - first_rx.unwrap()).as_secs_f64();
    println!(
        "offered 2x, delivered {:.2} Mbit/s of 20; {st}",
        measured / 1e6
    );
    assert!(
        (measured - rate as f64).abs() / (rate as f64) < 0.05,
        "{measured}"
    );
    assert!(st.a_to_b.dropped_queue > 0, "{st}");
    assert_eq!(st.a_to_b.dropped(), st.a_to_b.dropped_queue);
}

fn netns_exists(name: &str) -> bool {
    std::path::Path::new("/var/run/netns").join(name).exists()
}

#[test]
fn namespaces_are_removed_on_stop_on_panic_and_when_stale() {
    let Some(_g) = setup("cleanup") else { return };
    let wan = Wan::start(WanConfig::default()).unwrap();
    let (a, b) = (wan.ns_a().to_string(), wan.ns_b().to_string());
    assert!(netns_exists(&a) && netns_exists(&b));
    wan.stop();
    assert!(!netns_exists(&a) && !netns_exists(&b));

    let names = std::sync::Mutex::new(Vec::new());
    let r = std::panic::catch_unwind(|| {
        let wan = Wan::start(WanConfig::default()).unwrap();
        names.lock().unwrap().push(wan.ns_a().to_string());
        panic!("a test failing while the WAN is up");
    });
    assert!(r.is_err());
    let a = names.lock().unwrap()[0].clone();
    assert!(!netns_exists(&a), "{a} left behind after a panic");

    // A namespace of a dead process (pid above pid_max cannot be alive).
    let stale = "swe-99999999-0-a";
    let st = std::process::Command::new("ip")
        .args(["netns", "add", stale])
        .status()
        .unwrap();
    assert!(st.success());
    let removed = strait_wanem::cleanup_stale().unwrap();
    assert!(removed.contains(&stale.to_string()), "{removed:?}");
    assert!(!netns_exists(stale));
}

#[test]
fn commands_run_inside_site_a_see_only_the_wan_device() {
    let Some(_g) = setup("command_in_a") else {
        return;
    };
    let wan = Wan::start(WanConfig::default()).unwrap();
    let out = wan
        .command_in_a("ip")
        .args(["-o", "-4", "addr"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&wan.addr_a().to_string()), "{text}");
    assert!(!text.contains(&wan.addr_b().to_string()), "{text}");
    assert_ne!(wan.addr_a(), Ipv4Addr::UNSPECIFIED);
}
