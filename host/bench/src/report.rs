//! Results: medians of interleaved rounds, ratios against the reference measured in the
//! same run, written to `BENCHMARKS.json` and `BENCHMARKS.md` at the repository root.

use std::fmt::Write as _;

use anyhow::Result;
use serde::Serialize;

use crate::procs::repo_root;

/// Which way is better for a figure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Better {
    Higher,
    Lower,
}

/// One reported figure: weft's value, the reference's value from the same run, and
/// `ratio = value / reference`.
#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    pub section: String,
    pub name: String,
    pub unit: String,
    pub value: f64,
    pub reference: String,
    pub reference_value: f64,
    pub ratio: f64,
    pub better: Better,
    /// The target for the ratio or value, if it sets one.
    pub target: Option<Target>,
    pub met: Option<bool>,
    pub command: String,
}

/// A target: the ratio (or, for absolute targets, the value) must be at least or at most this.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Target {
    pub on_ratio: bool,
    pub at_least: Option<f64>,
    pub at_most: Option<f64>,
}

impl Target {
    pub fn ratio_at_least(x: f64) -> Option<Target> {
        Some(Target {
            on_ratio: true,
            at_least: Some(x),
            at_most: None,
        })
    }
    pub fn ratio_at_most(x: f64) -> Option<Target> {
        Some(Target {
            on_ratio: true,
            at_least: None,
            at_most: Some(x),
        })
    }
    pub fn value_at_most(x: f64) -> Option<Target> {
        Some(Target {
            on_ratio: false,
            at_least: None,
            at_most: Some(x),
        })
    }

    fn describe(&self, unit: &str) -> String {
        let (sign, x) = match (self.at_least, self.at_most) {
            (Some(x), _) => ("≥", x),
            (_, Some(x)) => ("≤", x),
            _ => return String::new(),
        };
        if self.on_ratio {
            format!("{sign} {x}x")
        } else {
            format!("{sign} {x} {unit}")
        }
    }
}

/// One figure of a section, for [`Report::add_rows`]: name, unit, weft's value, the
/// reference's name and value, which way is better, and the target.
pub type Row<'a> = (&'a str, &'a str, f64, &'a str, f64, Better, Option<Target>);

/// Every figure of a run.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub date: String,
    pub machine: String,
    pub quick: bool,
    pub figures: Vec<Figure>,
}

impl Report {
    /// Adds each row as a figure of `section`, all measured by `command`.
    pub fn add_rows(&mut self, section: &str, command: &str, rows: &[Row]) {
        for &(name, unit, value, reference, reference_value, better, target) in rows {
            self.add(
                section,
                name,
                unit,
                value,
                reference,
                reference_value,
                better,
                target,
                command,
            );
        }
    }

    /// Adds a figure; prints it at once so a long run shows progress.
    #[allow(clippy::too_many_arguments)]
    pub fn add(
        &mut self,
        section: &str,
        name: &str,
        unit: &str,
        value: f64,
        reference: &str,
        reference_value: f64,
        better: Better,
        target: Option<Target>,
        command: &str,
    ) {
        let ratio = value / reference_value;
        let met = target.map(|t| {
            let x = if t.on_ratio { ratio } else { value };
            t.at_least.is_none_or(|min| x >= min) && t.at_most.is_none_or(|max| x <= max)
        });
        let figure = Figure {
            section: section.into(),
            name: name.into(),
            unit: unit.into(),
            value,
            reference: reference.into(),
            reference_value,
            ratio,
            better,
            target,
            met,
            command: command.into(),
        };
        println!(
            "  {:<48} {:>10} {:<6} vs {} {} -> {:.2}x{}",
            figure.name,
            number(value),
            unit,
            figure.reference,
            number(reference_value),
            ratio,
            match met {
                Some(true) => "  (target met)",
                Some(false) => "  (target missed)",
                None => "",
            }
        );
        self.figures.push(figure);
    }

    /// Writes BENCHMARKS.json and BENCHMARKS.md (or their `-quick` variants under
    /// target/bench, so a quick run never replaces the recorded figures).
    pub fn write(&self) -> Result<()> {
        let (json, md) = if self.quick {
            let dir = crate::procs::work_dir();
            (
                dir.join("BENCHMARKS-quick.json"),
                dir.join("BENCHMARKS-quick.md"),
            )
        } else {
            (
                repo_root().join("BENCHMARKS.json"),
                repo_root().join("BENCHMARKS.md"),
            )
        };
        std::fs::write(&json, serde_json::to_string_pretty(self)? + "\n")?;
        std::fs::write(&md, self.markdown())?;
        println!("\nwrote {} and {}", md.display(), json.display());
        Ok(())
    }

    fn markdown(&self) -> String {
        let mut md = String::new();
        let _ = writeln!(
            md,
            "# weft benchmarks\n\n\
             Written by `just bench` (`host/bench/`) on {}; machine: {}.\n\
             Do not edit by hand: run `just bench` again. The same figures are in `BENCHMARKS.json`.\n\n\
             Every figure is a median over interleaved rounds (A B A B ...), and every ratio is\n\
             weft's figure divided by the reference's figure **measured in the same run**:\n\
             absolute numbers on shared 2-core machines drift, ratios much less.\n\
             Ratio > 1 is better where higher is better (requests/s), worse where lower is better\n\
             (latency, time, memory).\n",
            self.date, self.machine
        );
        let mut section = "";
        for f in &self.figures {
            if f.section != section {
                section = &f.section;
                let _ = writeln!(
                    md,
                    "\n## {section}\n\n| Figure | weft | Reference | Ratio | Target | Met | Command |\n|---|---:|---|---:|---|---|---|"
                );
            }
            let target = f.target.map(|t| t.describe(&f.unit)).unwrap_or_default();
            let met = match f.met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "",
            };
            let arrow = match f.better {
                Better::Higher => "↑",
                Better::Lower => "↓",
            };
            let _ = writeln!(
                md,
                "| {} ({} {arrow}) | {} | {}: {} | {:.2}x | {target} | {met} | `{}` |",
                f.name,
                f.unit,
                number(f.value),
                f.reference,
                number(f.reference_value),
                f.ratio,
                f.command
            );
        }
        md
    }
}

/// A figure with sensible precision.
pub fn number(x: f64) -> String {
    if !x.is_finite() {
        "-".into()
    } else if x >= 100.0 {
        format!("{x:.0}")
    } else if x >= 10.0 {
        format!("{x:.1}")
    } else if x >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

/// The median of some measurements.
pub fn median(mut xs: Vec<f64>) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    xs.sort_by(f64::total_cmp);
    let mid = xs.len() / 2;
    if xs.len() % 2 == 1 {
        xs[mid]
    } else {
        (xs[mid - 1] + xs[mid]) / 2.0
    }
}
