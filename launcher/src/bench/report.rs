//! nccl-tests' `all_reduce_perf` output, byte for byte in layout, so existing parsers work.
//!
//! Formats follow nccl-tests `src/common.cu`: rows `%12li  %12li  %8s  %6s  %6i`, then per
//! half `  %7s  %6.2f  %6.2f  %5li` with the time printed `%7.2f` below 100 µs, `%7.1f` below
//! 10 ms and `%7.0f` above; GB = 1e9 B; busbw = algbw · 2(n−1)/n.

use std::fmt::Write as _;

use serde::Serialize;

/// One half (out-of-place or in-place) of a result row.
#[derive(Clone, Copy, Debug, Serialize)]
pub(crate) struct Half {
    /// Mean time per operation, averaged over ranks, in µs.
    pub(crate) time: f64,
    pub(crate) alg_bw: f64,
    pub(crate) bus_bw: f64,
    pub(crate) nwrong: u64,
}

impl Half {
    pub(crate) fn new(bytes: usize, seconds: f64, ranks: usize, nwrong: u64) -> Half {
        let alg_bw = if seconds > 0.0 {
            bytes as f64 / 1e9 / seconds
        } else {
            0.0
        };
        let factor = 2.0 * (ranks as f64 - 1.0) / ranks as f64;
        Half {
            time: seconds * 1e6,
            alg_bw,
            bus_bw: alg_bw * factor,
            nwrong,
        }
    }
}

/// One size's row.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Row {
    pub(crate) size: usize,
    pub(crate) count: usize,
    #[serde(rename = "type")]
    pub(crate) dtype: &'static str,
    pub(crate) redop: &'static str,
    pub(crate) root: i32,
    pub(crate) out_of_place: Half,
    pub(crate) in_place: Half,
    /// Timed iterations per half (an extra key; nccl-tests has `actual_iterations`).
    pub(crate) actual_iterations: usize,
}

/// The preamble and the two header lines.
pub(crate) fn header(config_line: &str, device_lines: &[String]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Collective test starting: all_reduce_perf");
    let _ = writeln!(s, "# {config_line}");
    let _ = writeln!(s, "#");
    let _ = writeln!(s, "# Using devices");
    for d in device_lines {
        let _ = writeln!(s, "{d}");
    }
    let _ = writeln!(s, "#");
    let _ = writeln!(
        s,
        "# {:>10}  {:>12}  {:>8}  {:>6}  {:>6}           out-of-place                       in-place          ",
        "", "", "", "", ""
    );
    let _ = writeln!(
        s,
        "# {:>10}  {:>12}  {:>8}  {:>6}  {:>6}  {:>7}  {:>6}  {:>6} {:>6}  {:>7}  {:>6}  {:>6} {:>6}",
        "size",
        "count",
        "type",
        "redop",
        "root",
        "time",
        "algbw",
        "busbw",
        "#wrong",
        "time",
        "algbw",
        "busbw",
        "#wrong"
    );
    let _ = writeln!(
        s,
        "# {:>10}  {:>12}  {:>8}  {:>6}  {:>6}  {:>7}  {:>6}  {:>6}  {:>5}  {:>7}  {:>6}  {:>6}  {:>5}",
        "(B)",
        "(elements)",
        "",
        "",
        "",
        "(us)",
        "(GB/s)",
        "(GB/s)",
        "",
        "(us)",
        "(GB/s)",
        "(GB/s)",
        ""
    );
    s
}

/// nccl-tests' device line for one rank (a CPU rank prints its transport endpoint).
pub(crate) fn device_line(rank: usize, pid: u32, host: &str, what: &str) -> String {
    format!("#  Rank {rank:>2} Group  0 Pid {pid:>6} on {host:>10} device  0 [0000:00:00] {what}")
}

fn time_str(us: f64) -> String {
    if us >= 10000.0 {
        format!("{us:>7.0}")
    } else if us >= 100.0 {
        format!("{us:>7.1}")
    } else {
        format!("{us:>7.2}")
    }
}

/// One table row, without the trailing newline.
pub(crate) fn row(r: &Row) -> String {
    let mut s = format!(
        "{:>12}  {:>12}  {:>8}  {:>6}  {:>6}",
        r.size, r.count, r.dtype, r.redop, r.root
    );
    for h in [&r.out_of_place, &r.in_place] {
        let _ = write!(
            s,
            "  {}  {:>6.2}  {:>6.2}  {:>5}",
            time_str(h.time),
            h.alg_bw,
            h.bus_bw,
            h.nwrong
        );
    }
    s
}

/// The mean bus bandwidth over every printed half-row.
pub(crate) fn avg_bus_bw(rows: &[Row]) -> f64 {
    let halves: Vec<f64> = rows
        .iter()
        .flat_map(|r| [r.out_of_place.bus_bw, r.in_place.bus_bw])
        .collect();
    if halves.is_empty() {
        0.0
    } else {
        halves.iter().sum::<f64>() / halves.len() as f64
    }
}

/// The footer: out-of-bounds count and average bus bandwidth.
pub(crate) fn footer(rows: &[Row]) -> String {
    let wrong: u64 = rows
        .iter()
        .map(|r| r.out_of_place.nwrong + r.in_place.nwrong)
        .sum();
    let verdict = if wrong == 0 { "OK" } else { "FAILED" };
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# {:<20} : {} {}",
        "Out of bounds values", wrong, verdict
    );
    let _ = writeln!(
        s,
        "# {:<20} : {} ",
        "Avg bus bandwidth",
        fmt_g(avg_bus_bw(rows))
    );
    let _ = writeln!(s, "#");
    let _ = writeln!(s, "# Collective test concluded: all_reduce_perf");
    s
}

/// C's `%g`: six significant digits, trailing zeros dropped.
fn fmt_g(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let exp = v.abs().log10().floor() as i32;
    if !(-5..6).contains(&exp) {
        let s = format!("{:.5e}", v);
        let (m, e) = s.split_once('e').unwrap_or((&s, "0"));
        let m = m.trim_end_matches('0').trim_end_matches('.');
        let e: i32 = e.parse().unwrap_or(0);
        return format!("{m}e{}{:02}", if e < 0 { '-' } else { '+' }, e.abs());
    }
    let decimals = (5 - exp).max(0) as usize;
    let s = format!("{v:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_layout_matches_nccl_tests() {
        let h = Half::new(8, 42.56e-6, 2, 0);
        let r = Row {
            size: 8,
            count: 2,
            dtype: "float",
            redop: "sum",
            root: -1,
            out_of_place: h,
            in_place: Half::new(8, 12345.0e-6, 2, 3),
            actual_iterations: 20,
        };
        assert_eq!(
            row(&r),
            "           8             2     float     sum      -1    42.56    0.00    0.00      0    12345    0.00    0.00      3"
        );
    }

    #[test]
    fn bandwidths_use_1e9_and_the_ring_factor() {
        let h = Half::new(1_000_000_000, 1.0, 4, 0);
        assert_eq!((h.alg_bw, h.bus_bw), (1.0, 1.5));
        assert_eq!(time_str(123.456), "  123.5");
    }

    #[test]
    fn footer_lines() {
        let f = footer(&[]);
        assert!(
            f.starts_with("# Out of bounds values : 0 OK\n# Avg bus bandwidth    : 0 \n#\n"),
            "{f}"
        );
        assert_eq!(fmt_g(123.456789), "123.457");
        assert_eq!(fmt_g(0.5), "0.5");
        assert_eq!(fmt_g(1234567.0), "1.23457e+06");
    }

    #[test]
    fn header_columns_line_up_with_rows() {
        let h = header("nThread 1", &[]);
        let names = h.lines().find(|l| l.contains("#wrong")).unwrap();
        assert_eq!(
            names,
            "#       size         count      type   redop    root     time   algbw   busbw #wrong     time   algbw   busbw #wrong"
        );
    }
}
