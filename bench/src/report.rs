//! The table: berth and the baseline side by side, as a ratio.

pub(crate) struct Row {
    pub name: String,
    pub berth: f64,
    pub baseline: Option<f64>,
    pub target: String,
}

impl Row {
    pub(crate) fn new(name: &str, berth: f64, baseline: Option<f64>, target: &str) -> Row {
        Row { name: name.into(), berth, baseline, target: target.into() }
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
            Some(b) if b != 0.0 => (num(b), format!("{:.2}×", r.berth / b)),
            Some(b) => (num(b), "—".into()),
            None => ("—".into(), "—".into()),
        };
        out.push_str(&format!("| {} | {} | {} | {} | {} |\n", r.name, num(r.berth), base, ratio, r.target));
    }
    out
}
