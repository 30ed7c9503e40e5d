//! `strait-wanem`: run the WAN emulator from a shell.
//!
//! ```text
//! strait-wanem up  --delay 50ms --rate 100mbit --loss 1%          # prints namespaces, Ctrl-C ends
//! strait-wanem run --delay 10ms/40ms --rate 100mbit -- ping ...   # runs a command in site A
//! strait-wanem cleanup                                            # removes stale swe-* namespaces
//! ```
//! Every link flag takes `X` (both directions) or `X/Y` (A→B / B→A).

use std::os::unix::process::CommandExt;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use strait_wanem::{
    parse_duration, parse_probability, parse_queue, parse_rate, GilbertElliott, LinkParams, Wan,
    WanConfig,
};

#[derive(Parser)]
#[command(
    name = "strait-wanem",
    about = "Userspace WAN emulator between two network namespaces"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Bring the WAN up, print the namespaces and addresses, and wait for Ctrl-C / SIGTERM.
    Up(LinkArgs),
    /// Bring the WAN up, run a command inside site A, print the counters, tear down.
    Run {
        #[command(flatten)]
        link: LinkArgs,
        /// The command (and arguments) to run in site A.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Remove leftover `swe-*` namespaces of dead processes.
    Cleanup,
}

#[derive(Args)]
struct LinkArgs {
    /// One-way delay, e.g. 50ms or 10ms/40ms.
    #[arg(long, default_value = "0")]
    delay: String,
    /// Jitter (± around the delay), e.g. 2ms.
    #[arg(long, default_value = "0")]
    jitter: String,
    /// Rate limit, e.g. 100mbit; omit for unlimited.
    #[arg(long)]
    rate: Option<String>,
    /// Drop-tail queue: 100ms (of the rate) or bytes (256kb).
    #[arg(long, default_value = "100ms")]
    queue: String,
    /// Random loss, e.g. 1%.
    #[arg(long, default_value = "0%")]
    loss: String,
    /// Gilbert–Elliott mean loss, e.g. 1% (needs --burst-len).
    #[arg(long)]
    burst_loss: Option<String>,
    /// Gilbert–Elliott mean burst length in packets, e.g. 4.
    #[arg(long)]
    burst_len: Option<String>,
    /// Reorder probability, e.g. 0.5%.
    #[arg(long, default_value = "0%")]
    reorder: String,
    /// Extra delay of reordered packets.
    #[arg(long, default_value = "10ms")]
    reorder_delay: String,
    /// Duplication probability.
    #[arg(long, default_value = "0%")]
    duplicate: String,
    /// RNG seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// TCP congestion control in both namespaces (cubic, bbr, reno).
    #[arg(long)]
    cc: Option<String>,
}

/// Splits `X/Y` into per-direction values; `X` means both.
fn per_dir<T>(
    flag: &str,
    s: &str,
    parse: impl Fn(&str) -> Result<T, strait_wanem::Error>,
) -> Result<(T, T)> {
    let (a, b) = match s.split_once('/') {
        Some((a, b)) => (a, b),
        None => (s, s),
    };
    let p = |v: &str| parse(v).with_context(|| format!("--{flag}={s:?}"));
    Ok((p(a)?, p(b)?))
}

impl LinkArgs {
    fn config(&self) -> Result<WanConfig> {
        let delay = per_dir("delay", &self.delay, parse_duration)?;
        let jitter = per_dir("jitter", &self.jitter, parse_duration)?;
        let rate = match &self.rate {
            Some(r) => {
                let (a, b) = per_dir("rate", r, parse_rate)?;
                (Some(a), Some(b))
            }
            None => (None, None),
        };
        let queue = per_dir("queue", &self.queue, parse_queue)?;
        let loss = per_dir("loss", &self.loss, parse_probability)?;
        let burst = match (&self.burst_loss, &self.burst_len) {
            (Some(l), Some(n)) => {
                let (la, lb) = per_dir("burst-loss", l, parse_probability)?;
                let (na, nb) = per_dir("burst-len", n, |v| {
                    v.trim()
                        .parse::<f64>()
                        .map_err(|_| strait_wanem::Error::Parse {
                            what: "burst length".into(),
                            value: v.into(),
                            reason: "expected a number of packets >= 1".into(),
                        })
                })?;
                let ge = |mean_loss, mean_burst| {
                    (mean_loss > 0.0).then_some(GilbertElliott {
                        mean_loss,
                        mean_burst,
                    })
                };
                (ge(la, na), ge(lb, nb))
            }
            (None, None) => (None, None),
            _ => bail!("--burst-loss and --burst-len go together"),
        };
        let reorder = per_dir("reorder", &self.reorder, parse_probability)?;
        let reorder_delay = per_dir("reorder-delay", &self.reorder_delay, parse_duration)?;
        let duplicate = per_dir("duplicate", &self.duplicate, parse_probability)?;
        fn pick<T: Copy>(i: usize, t: &(T, T)) -> T {
            if i == 0 {
                t.0
            } else {
                t.1
            }
        }
        let link = |i: usize| LinkParams {
            delay: pick(i, &delay),
            jitter: pick(i, &jitter),
            rate_bps: pick(i, &rate),
            queue: pick(i, &queue),
            loss: pick(i, &loss),
            burst: pick(i, &burst),
            reorder: pick(i, &reorder),
            reorder_delay: pick(i, &reorder_delay),
            duplicate: pick(i, &duplicate),
        };
        Ok(WanConfig {
            a_to_b: link(0),
            b_to_a: link(1),
            seed: self.seed,
            congestion_control: self.cc.clone(),
            ..WanConfig::default()
        })
    }
}

/// Blocks SIGINT/SIGTERM in this thread (and all threads spawned after) so one thread can
/// `sigwait` for them and tear down cleanly instead of dying with namespaces left behind.
fn block_signals() -> libc::sigset_t {
    // SAFETY: sigset operations on a local, zero-initialised set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

fn wait_signal(set: &libc::sigset_t) -> i32 {
    let mut sig = 0;
    // SAFETY: set is a valid signal set; sig is a valid out-pointer.
    unsafe { libc::sigwait(set, &mut sig) };
    sig
}

fn main() -> std::process::ExitCode {
    match real_main() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("strait-wanem: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn real_main() -> Result<()> {
    let cli = Cli::parse();
    let set = block_signals();
    match cli.cmd {
        Cmd::Cleanup => {
            for n in strait_wanem::cleanup_stale()? {
                println!("removed {n}");
            }
            Ok(())
        }
        Cmd::Up(link) => {
            let wan = Wan::start(link.config()?)?;
            println!("site A: namespace {} address {}", wan.ns_a(), wan.addr_a());
            println!("site B: namespace {} address {}", wan.ns_b(), wan.addr_b());
            println!(
                "run inside with: ip netns exec {} <cmd>   (Ctrl-C to stop)",
                wan.ns_a()
            );
            let sig = wait_signal(&set);
            let stats = wan.stop();
            eprintln!("signal {sig}; namespaces removed\n{stats}");
            Ok(())
        }
        Cmd::Run { link, command } => {
            let wan = Wan::start(link.config()?)?;
            let (prog, args) = command.split_first().context("no command given")?;
            let mut cmd = wan.command_in_a(prog);
            cmd.args(args);
            // SAFETY: only async-signal-safe calls (pthread_sigmask) between fork and exec.
            unsafe {
                cmd.pre_exec(|| {
                    let mut empty: libc::sigset_t = std::mem::zeroed();
                    libc::sigemptyset(&mut empty);
                    libc::pthread_sigmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
                    Ok(())
                });
            }
            let mut child = cmd.spawn().with_context(|| format!("starting {prog}"))?;
            let pid = child.id() as libc::pid_t;
            // Forward a termination request to the child; the teardown below runs after it exits.
            let _forwarder = std::thread::spawn(move || {
                let sig = wait_signal(&set);
                // SAFETY: kill with a pid we spawned.
                unsafe { libc::kill(pid, sig) };
            });
            let status = child.wait().context("waiting for the command")?;
            let stats = wan.stop();
            eprintln!("{stats}");
            std::process::exit(status.code().unwrap_or(1));
        }
    }
}
