//! The table: berth and the baseline side by side, as a ratio.

pub(crate) struct Row {
    pub name: String,
    pub berth: f64,
    pub baseline: Option<f64>,
    pub target: String,
    /// (min, max) of the samples when `berth` and `baseline` are medians.
    pub berth_spread: Option<(f64, f64)>,
    pub baseline_spread: Option<(f64, f64)>,
    /// How [`across_runs`] folds this row's runs into one.
    pub across: Across,
}

/// How the runs of a row make one figure.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Across {
    /// A time, a rate, a size: the median, with min–max.
    Median,
    /// A count (failed tasks): the total.
    Sum,
    /// A process's peak: the highest.
    Max,
}

impl Row {
    pub(crate) fn new(name: &str, berth: f64, baseline: Option<f64>, target: &str) -> Row {
        Row {
            name: name.into(),
            berth,
            baseline,
            target: target.into(),
            berth_spread: None,
            baseline_spread: None,
            across: Across::Median,
        }
    }

    /// A count: several runs add up.
    pub(crate) fn count(name: &str, berth: f64, baseline: Option<f64>, target: &str) -> Row {
        Row { across: Across::Sum, ..Row::new(name, berth, baseline, target) }
    }

    /// A peak: several runs give the highest.
    pub(crate) fn peak(name: &str, berth: f64, target: &str) -> Row {
        Row { across: Across::Max, ..Row::new(name, berth, None, target) }
    }

    /// The median of several runs of berth alone, with their spread.
    pub(crate) fn median_alone(name: &str, berth: &[f64], target: &str) -> Row {
        let (b, bs) = median(berth);
        Row { berth_spread: Some(bs), ..Row::new(&format!("{name} (median of {})", berth.len()), b, None, target) }
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
            across: Across::Median,
        }
    }
}

/// One row per name out of several runs of the same phases (in the first
/// run's order): medians with min–max, totals of counts, the highest peak.
/// The name says which, and over how many runs.
pub(crate) fn across_runs(runs: &[Vec<Row>]) -> Vec<Row> {
    let Some(first) = runs.first() else { return Vec::new() };
    let n = runs.len();
    first
        .iter()
        .map(|r| {
            let same: Vec<&Row> = runs.iter().filter_map(|run| run.iter().find(|x| x.name == r.name)).collect();
            let berth: Vec<f64> = same.iter().map(|x| x.berth).collect();
            let baseline: Vec<f64> = same.iter().filter_map(|x| x.baseline).collect();
            let base = (!baseline.is_empty()).then_some(());
            match r.across {
                _ if n == 1 => Row::new(&r.name, r.berth, r.baseline, &r.target),
                Across::Median => {
                    let (b, bs) = median(&berth);
                    let (c, cs) = median(&baseline);
                    Row {
                        berth_spread: Some(bs),
                        baseline_spread: base.map(|_| cs),
                        ..Row::new(&format!("{} (median of {})", r.name, same.len()), b, base.map(|_| c), &r.target)
                    }
                }
                Across::Sum => Row::count(
                    &format!("{} (total of {} runs)", r.name, same.len()),
                    berth.iter().sum(),
                    base.map(|_| baseline.iter().sum()),
                    &r.target,
                ),
                Across::Max => Row::peak(
                    &format!("{} (highest of {} runs)", r.name, same.len()),
                    berth.iter().copied().fold(f64::MIN, f64::max),
                    &r.target,
                ),
            }
        })
        .collect()
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

    #[test]
    fn runs_fold_into_medians_totals_and_peaks() {
        let run = |t: f64, failed: f64, peak: f64| {
            vec![
                Row::new("t", t, Some(2.0 * t), ""),
                Row::count("failed", failed, None, "0"),
                Row::peak("rss", peak, ""),
                Row::new("alone", t, None, ""),
            ]
        };
        let rows = across_runs(&[run(1.0, 0.0, 30.0), run(5.0, 1.0, 40.0), run(3.0, 2.0, 35.0)]);
        let got: Vec<(&str, f64, Option<f64>)> = rows.iter().map(|r| (r.name.as_str(), r.berth, r.baseline)).collect();
        assert_eq!(
            got,
            vec![
                ("t (median of 3)", 3.0, Some(6.0)),
                ("failed (total of 3 runs)", 3.0, None),
                ("rss (highest of 3 runs)", 40.0, None),
                ("alone (median of 3)", 3.0, None),
            ]
        );
        assert_eq!((rows[0].berth_spread, rows[0].baseline_spread), (Some((1.0, 5.0)), Some((2.0, 10.0))));
        assert_eq!(rows[3].baseline_spread, None);
        // One run: the row as it was.
        assert_eq!(across_runs(&[run(1.0, 0.0, 30.0)])[0].name, "t");
    }
}
