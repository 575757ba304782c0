//! The table: berth and the baseline side by side, as a ratio.

pub(crate) struct Row {
    pub name: String,
    pub berth: f64,
    pub baseline: Option<f64>,
    pub target: String,
    /// (min, max) of the samples when `berth` and `baseline` are medians.
    pub berth_spread: Option<(f64, f64)>,
    pub baseline_spread: Option<(f64, f64)>,
}

impl Row {
    pub(crate) fn new(name: &str, berth: f64, baseline: Option<f64>, target: &str) -> Row {
        Row { name: name.into(), berth, baseline, target: target.into(), berth_spread: None, baseline_spread: None }
    }

    /// The medians of several runs, with their spread (min–max).
    pub(crate) fn medians(name: &str, berth: &[f64], baseline: &[f64], target: &str) -> Row {
        let (b, bs) = median(berth);
        let (c, cs) = median(baseline);
        Row {
            name: format!("{name} (median of {})", berth.len()),
            berth: b,
            baseline: Some(c),
            target: target.into(),
            berth_spread: Some(bs),
            baseline_spread: Some(cs),
        }
    }
}

/// The median of `v` and its (min, max).
fn median(v: &[f64]) -> (f64, (f64, f64)) {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        return (0.0, (0.0, 0.0));
    }
    let n = s.len();
    let m = if n % 2 == 1 { s[n / 2] } else { (s[n / 2 - 1] + s[n / 2]) / 2.0 };
    (m, (s[0], s[n - 1]))
}

fn with_spread(v: f64, spread: Option<(f64, f64)>) -> String {
    match spread {
        Some((lo, hi)) => format!("{} ({}–{})", num(v), num(lo), num(hi)),
        None => num(v),
    }
}

fn num(v: f64) -> String {
    if (v.fract() == 0.0 && v.abs() < 1e9) || v.abs() >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// A Markdown table (what BENCHMARKS.md holds).
pub(crate) fn markdown(rows: &[Row]) -> String {
    let mut out =
        String::from("| measure | berth | baseline | berth ÷ baseline | target |\n|---|---:|---:|---:|---|\n");
    for r in rows {
        let (base, ratio) = match r.baseline {
            Some(b) if b != 0.0 => (with_spread(b, r.baseline_spread), format!("{:.2}×", r.berth / b)),
            Some(b) => (with_spread(b, r.baseline_spread), "—".into()),
            None => ("—".into(), "—".into()),
        };
        let berth = with_spread(r.berth, r.berth_spread);
        out.push_str(&format!("| {} | {} | {} | {} | {} |\n", r.name, berth, base, ratio, r.target));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_show_their_spread() {
        let r = Row::medians("x", &[3.0, 1.0, 2.0], &[4.0, 4.0, 8.0, 2.0], "");
        assert_eq!(
            (r.berth, r.berth_spread, r.baseline, r.baseline_spread),
            (2.0, Some((1.0, 3.0)), Some(4.0), Some((2.0, 8.0)))
        );
        assert!(markdown(&[r]).contains("| x (median of 3) | 2 (1–3) | 4 (2–8) | 0.50× |"));
    }
}
