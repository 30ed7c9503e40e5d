//! `strait`: the AI-aware WAN optimization proxy. Thin: parses arguments and hands off to
//! `strait-app`.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// strait: an edge/core proxy pair that carries TCP over one QUIC tunnel with chunk dedup,
/// compression and FEC.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the core (next to the data): accepts tunnels from edges, connects declared services.
    Core {
        /// Config file with a [core] section.
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
    },
    /// Run an edge (next to the pipelines): local forwards carried to the core.
    Edge {
        /// Config file with an [edge] section.
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
    },
    /// Create a private CA, a server certificate per core, a client certificate per edge and the
    /// shared dedup key. Reuses an existing CA; never overwrites files without --force.
    Certs {
        /// Output directory.
        #[arg(long, default_value = "certs", value_name = "DIR")]
        out: PathBuf,
        /// Core server name (certificate DNS name); repeat for several. Default: localhost.
        #[arg(long = "core", value_name = "NAME")]
        cores: Vec<String>,
        /// Edge name (client certificate common name); repeat for several. Default: edge-a.
        #[arg(long = "edge", value_name = "NAME")]
        edges: Vec<String>,
        /// Overwrite existing files (including the CA and the dedup key).
        #[arg(long)]
        force: bool,
    },
    /// Show what a running process carried (reads its admin /stats).
    Stats {
        /// Admin URL, e.g. http://127.0.0.1:9902. Default: the admin address of --config, else
        /// the local edge (127.0.0.1:9901), else the local core (127.0.0.1:9902).
        #[arg(long, value_name = "URL")]
        admin: Option<String>,
        /// Take the admin address from this config file.
        #[arg(long, short, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Print the raw JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Validate config files: print every problem; exit status 0 when all are valid, else 1.
    CheckConfig {
        /// Config files.
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
        /// Do not check that referenced files (certificates, key file) exist.
        #[arg(long)]
        no_files: bool,
    },
    /// Run an origin, a core and an edge on loopback with throwaway certificates, fetch a
    /// generated AI dataset through them twice and print what crossed the tunnel.
    Demo {
        /// Sample data size in MiB.
        #[arg(long, default_value_t = 256, value_name = "MIB")]
        size_mib: usize,
        /// Passes over the data.
        #[arg(long, default_value_t = 2)]
        passes: usize,
        /// Seed of the generated data.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Forward error correction on the tunnel: off, adaptive, or K+M (e.g. 32+4).
        #[arg(long, default_value = "off")]
        fec: String,
    },
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn load(path: &std::path::Path) -> anyhow::Result<strait_config::Config> {
    Ok(strait_config::load(path, true)?)
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.cmd {
        Cmd::Core { config } | Cmd::Edge { config } => {
            let cfg = load(&config)?;
            strait_app::init_tracing(&cfg.log_level);
            runtime()?.block_on(strait_app::run_until_signal(cfg))?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Certs {
            out,
            mut cores,
            mut edges,
            force,
        } => {
            if cores.is_empty() && edges.is_empty() {
                cores.push("localhost".into());
                edges.push("edge-a".into());
            }
            let g = strait_transport::certs::generate(&out, &cores, &edges, force)?;
            for p in &g.reused {
                println!("kept    {}", p.display());
            }
            for p in &g.written {
                println!("wrote   {}", p.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Stats {
            admin,
            config,
            json,
        } => {
            let candidates: Vec<String> = match (admin, config) {
                (Some(a), _) => vec![a],
                (None, Some(c)) => vec![strait_config::load(&c, false)?.admin_listen.to_string()],
                (None, None) => vec!["127.0.0.1:9901".into(), "127.0.0.1:9902".into()],
            };
            let mut last = None;
            for c in &candidates {
                let addr = strait_app::stats::admin_addr(c)?;
                match strait_app::stats::fetch(addr, "/stats") {
                    Ok(body) => {
                        if json {
                            println!("{body}");
                        } else {
                            let v: serde_json::Value = serde_json::from_str(&body)?;
                            print!("{}", strait_app::stats::render(&v));
                        }
                        return Ok(ExitCode::SUCCESS);
                    }
                    Err(e) => last = Some(e),
                }
            }
            match last {
                Some(e) => Err(e.into()),
                None => Ok(ExitCode::FAILURE),
            }
        }
        Cmd::CheckConfig { files, no_files } => {
            let mut ok = true;
            for f in &files {
                match strait_config::load(f, !no_files) {
                    Ok(cfg) => println!("{}: ok ({:?})", f.display(), cfg.role()),
                    Err(e) => {
                        ok = false;
                        println!("{e}");
                    }
                }
            }
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Cmd::Demo {
            size_mib,
            passes,
            seed,
            fec,
        } => {
            strait_app::init_tracing("warn");
            let fec = match fec.as_str() {
                "off" | "adaptive" => format!("\"{fec}\""),
                km => match km.split_once('+') {
                    Some((k, m)) => format!("{{ data = {k}, repair = {m} }}"),
                    None => {
                        anyhow::bail!("--fec {km:?} is not valid: expected off, adaptive or K+M")
                    }
                },
            };
            let opts = strait_app::demo::DemoOptions {
                size: size_mib << 20,
                passes,
                seed,
                fec,
            };
            let reports = runtime()?.block_on(strait_app::demo::run(&opts, |m| println!("{m}")))?;
            println!();
            print!("{}", strait_app::demo::table(&reports));
            if reports.len() >= 2 && reports[1].wan_bytes >= reports[0].wan_bytes {
                println!("second pass was not reduced: the dedup path is not working");
                return Ok(ExitCode::FAILURE);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn main() -> ExitCode {
    strait_app::alloc::tune();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("strait: {e:#}");
            ExitCode::FAILURE
        }
    }
}
