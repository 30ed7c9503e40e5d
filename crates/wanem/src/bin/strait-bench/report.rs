//! Markdown tables, a hand-written SVG chart, the machine description, and the marker-bounded
//! update of BENCHMARKS.md.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};

use crate::matrix::{Method, Sample};

/// One median row of the matrix.
#[derive(Debug, Clone)]
pub struct Row {
    pub link: &'static str,
    pub link_label: &'static str,
    pub workload: &'static str,
    pub method: Method,
    /// Samples behind the median.
    pub runs: usize,
    pub m: Sample,
}

/// nproc, CPU model, kernel.
pub fn machine() -> String {
    let nproc = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    format!("{nproc} CPUs ({model}), Linux {kernel}")
}

fn mib(b: u64) -> f64 {
    b as f64 / (1 << 20) as f64
}

fn per_gb(cpu: f64, logical: u64) -> f64 {
    cpu / (logical as f64 / 1e9).max(1e-12)
}

/// The table of all rows, one section per link.
pub fn table(rows: &[Row]) -> String {
    let mut s = String::new();
    let mut last_link = "";
    for r in rows {
        if r.link != last_link {
            last_link = r.link;
            let _ = write!(
                s,
                "\n**{}** (`{}`)\n\n| workload | method | n | time s | goodput Mbit/s | logical MiB | WAN MiB | WAN/logical | CPU s/GB A | CPU s/GB B | peak RSS MiB A / B | queue drops | time vs HTTP | WAN vs HTTP |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
                r.link_label, r.link
            );
        }
        let http = rows
            .iter()
            .find(|h| h.link == r.link && h.workload == r.workload && h.method == Method::HttpBbr);
        let (tr, wr) = match http {
            Some(h) if !r.m.partial => (
                format!("{:.2}", r.m.secs / h.m.secs.max(1e-9)),
                format!("{:.3}", r.m.wan as f64 / (h.m.wan as f64).max(1.0)),
            ),
            _ => ("–".into(), "–".into()),
        };
        let partial = if r.m.partial {
            " (capped, partial)"
        } else {
            ""
        };
        let _ = writeln!(
            s,
            "| {} | {}{} | {} | {:.2} | {:.1} | {:.1} | {:.1} | {:.3} | {:.1} | {:.1} | {:.0} / {:.0} | {} | {} | {} |",
            r.workload,
            r.method.key(),
            partial,
            r.runs,
            r.m.secs,
            r.m.goodput_mbit(),
            mib(r.m.logical),
            mib(r.m.wan),
            r.m.wan as f64 / (r.m.logical as f64).max(1.0),
            per_gb(r.m.cpu_a, r.m.logical),
            per_gb(r.m.cpu_b, r.m.logical),
            r.m.peak_a_kib as f64 / 1024.0,
            r.m.peak_b_kib as f64 / 1024.0,
            r.m.queue_drops,
            tr,
            wr
        );
    }
    s
}

const COLORS: &[(Method, &str)] = &[
    (Method::HttpBbr, "#4e79a7"),
    (Method::HttpCubic, "#a0cbe8"),
    (Method::Rsync, "#f28e2b"),
    (Method::ZstdNc, "#e15759"),
    (Method::StraitCold, "#59a14f"),
    (Method::StraitDelta, "#8cd17d"),
    (Method::StraitWarm, "#b6992d"),
];

/// Two panels of grouped bars (one group per link × workload): WAN bytes as % of logical, and
/// goodput in Mbit/s (log scale, so Cubic's collapse and the warm runs both show).
pub fn svg(rows: &[Row]) -> String {
    let mut groups: Vec<(&str, &str)> = Vec::new();
    for r in rows {
        if !groups.contains(&(r.link, r.workload)) {
            groups.push((r.link, r.workload));
        }
    }
    let bar = 9.0;
    let gap = 18.0;
    let gw = bar * COLORS.len() as f64 + gap;
    let left = 60.0;
    let width = left + gw * groups.len() as f64 + 20.0;
    let ph = 200.0;
    let height = 2.0 * ph + 200.0;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width:.0}\" height=\"{height:.0}\" font-family=\"sans-serif\" font-size=\"10\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    let panels: [(&str, f64, bool); 2] = [
        (
            "WAN bytes, % of logical bytes (lower is better)",
            30.0,
            false,
        ),
        (
            "goodput, Mbit/s, log scale (higher is better)",
            30.0 + ph + 60.0,
            true,
        ),
    ];
    for (title, top, log) in panels {
        let _ = writeln!(
            s,
            "<text x=\"{left}\" y=\"{:.0}\" font-size=\"12\" font-weight=\"bold\">{title}</text>",
            top - 10.0
        );
        let bottom = top + ph;
        let maxv = if log {
            1000.0f64
        } else {
            rows.iter()
                .filter(|r| !r.m.partial)
                .map(|r| 100.0 * r.m.wan as f64 / (r.m.logical as f64).max(1.0))
                .fold(10.0, f64::max)
                .min(150.0)
        };
        let y = |v: f64| -> f64 {
            if log {
                let v = v.clamp(0.1, maxv);
                bottom - ph * (v.log10() + 1.0) / (maxv.log10() + 1.0)
            } else {
                bottom - ph * (v.min(maxv) / maxv)
            }
        };
        let ticks: Vec<f64> = if log {
            vec![0.1, 1.0, 10.0, 100.0, 1000.0]
        } else {
            (0..=5).map(|i| maxv * i as f64 / 5.0).collect()
        };
        for t in ticks {
            let yy = y(t);
            let _ = writeln!(
                s,
                "<line x1=\"{left}\" x2=\"{:.0}\" y1=\"{yy:.1}\" y2=\"{yy:.1}\" stroke=\"#ddd\"/><text x=\"{:.0}\" y=\"{:.1}\" text-anchor=\"end\">{t:.0}</text>",
                width - 20.0,
                left - 4.0,
                yy + 3.0,
            );
        }
        for (gi, (link, wl)) in groups.iter().enumerate() {
            let x0 = left + gi as f64 * gw + gap / 2.0;
            for (mi, (m, color)) in COLORS.iter().enumerate() {
                let Some(r) = rows
                    .iter()
                    .find(|r| r.link == *link && r.workload == *wl && r.method == *m)
                else {
                    continue;
                };
                let v = if log {
                    r.m.goodput_mbit()
                } else {
                    100.0 * r.m.wan as f64 / (r.m.logical as f64).max(1.0)
                };
                let yy = y(v);
                let _ = writeln!(
                    s,
                    "<rect x=\"{:.1}\" y=\"{yy:.1}\" width=\"{bar}\" height=\"{:.1}\" fill=\"{color}\"><title>{link} {wl} {}: {v:.2}</title></rect>",
                    x0 + mi as f64 * bar,
                    (bottom - yy).max(0.5),
                    m.key()
                );
            }
        }
        for (gi, (link, wl)) in groups.iter().enumerate() {
            let x = left + gi as f64 * gw + gw / 2.0;
            let _ = writeln!(
                s,
                "<text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{wl}</text>",
                bottom + 12.0
            );
            if gi == 0 || groups[gi - 1].0 != *link {
                let _ = writeln!(
                    s,
                    "<text x=\"{:.1}\" y=\"{:.1}\" font-weight=\"bold\">{link}</text>",
                    left + gi as f64 * gw + 4.0,
                    bottom + 26.0
                );
            }
        }
    }
    let ly = height - 50.0;
    for (i, (m, c)) in COLORS.iter().enumerate() {
        let x = left + (i % 4) as f64 * 200.0;
        let yy = ly + (i / 4) as f64 * 16.0;
        let _ = writeln!(
            s,
            "<rect x=\"{x:.0}\" y=\"{yy:.0}\" width=\"10\" height=\"10\" fill=\"{c}\"/><text x=\"{:.0}\" y=\"{:.0}\">{}</text>",
            x + 14.0,
            yy + 9.0,
            m.label()
        );
    }
    s.push_str("</svg>\n");
    s
}

/// Replaces the text between `<!-- {name}:begin -->` and `<!-- {name}:end -->` in `path`
/// (creating the file, or appending the markers, when missing). Nothing else is touched.
pub fn write_between_markers(path: &Path, name: &str, body: &str) -> Result<()> {
    let begin = format!("<!-- {name}:begin -->");
    let end = format!("<!-- {name}:end -->");
    let old = match std::fs::read_to_string(path) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => "# Benchmarks\n".to_string(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let new = match (old.find(&begin), old.find(&end)) {
        (Some(b), Some(e)) if e > b => {
            format!("{}{begin}\n{body}\n{}", &old[..b], &old[e..])
        }
        _ => {
            let sep = if old.ends_with('\n') { "\n" } else { "\n\n" };
            format!("{old}{sep}{begin}\n{body}\n{end}\n")
        }
    };
    std::fs::write(path, new).with_context(|| format!("writing {}", path.display()))
}
