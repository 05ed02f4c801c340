//! What a run found: one [`Row`] per figure, each with its limit, ratio,
//! target and verdict, rendered as a text table or as JSON.

use serde::Serialize;

/// A measured quantity with its unit ("1.83 ns/slot").
#[derive(Clone, PartialEq, Debug, Serialize)]
pub struct Figure {
    /// The number.
    pub value: f64,
    /// Its unit, e.g. `ns/slot`, `GB/s`, `B/4KiB`.
    pub unit: String,
}

impl Figure {
    /// `value` in `unit`.
    pub fn new(value: f64, unit: &str) -> Self {
        Self { value, unit: unit.to_string() }
    }

    /// Three significant digits or so, then the unit.
    pub fn render(&self) -> String {
        format!("{} {}", fmt_number(self.value), self.unit)
    }
}

/// A number with about three significant digits.
pub fn fmt_number(value: f64) -> String {
    let magnitude = value.abs();
    if !value.is_finite() {
        "-".to_string()
    } else if magnitude >= 100.0 {
        format!("{value:.0}")
    } else if magnitude >= 10.0 {
        format!("{value:.1}")
    } else if magnitude >= 1.0 {
        format!("{value:.2}")
    } else {
        format!("{value:.3}")
    }
}

/// What a ratio has to be.
#[derive(Clone, Copy, PartialEq, Debug, Serialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum Target {
    /// At most this many times the limit.
    AtMost(f64),
    /// At least this fraction of the limit's throughput.
    AtLeast(f64),
    /// Strictly cheaper than the alternative (ratio below 1).
    Faster,
    /// A slope (cost per unit, big over small) at most this far above 1:
    /// a cost per unit that falls with size is no scaling problem.
    Flat(f64),
    /// At most this percentage.
    PercentAtMost(f64),
    /// No target: the figure is for information.
    None,
}

impl Target {
    /// The verdict for `ratio` (NaN when nothing was measured).
    pub fn judge(self, ratio: f64) -> Verdict {
        let met = match self {
            Self::None => return Verdict::Info,
            _ if ratio.is_nan() => return Verdict::Unavailable,
            Self::AtMost(limit) | Self::PercentAtMost(limit) => ratio <= limit,
            Self::AtLeast(fraction) => ratio >= fraction,
            Self::Faster => ratio < 1.0,
            Self::Flat(within) => ratio <= 1.0 + within,
        };
        if met {
            Verdict::Met
        } else {
            Verdict::Missed
        }
    }

    /// How a ratio under this target is written.
    pub fn render_ratio(self, ratio: f64) -> String {
        if ratio.is_nan() {
            return "-".to_string();
        }
        match self {
            Self::AtLeast(_) | Self::PercentAtMost(_) => format!("{}%", fmt_number(100.0 * ratio)),
            _ => format!("{}x", fmt_number(ratio)),
        }
    }

    /// The target as written in the table.
    pub fn render(self) -> String {
        match self {
            Self::AtMost(limit) => format!("<= {}x", fmt_number(limit)),
            Self::AtLeast(fraction) => format!(">= {}%", fmt_number(100.0 * fraction)),
            Self::Faster => "< 1x (mirror faster)".to_string(),
            Self::Flat(within) => format!("slope <= {}x", fmt_number(1.0 + within)),
            Self::PercentAtMost(limit) => format!("<= {}%", fmt_number(100.0 * limit)),
            Self::None => "-".to_string(),
        }
    }
}

/// Whether a target held.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The target holds.
    Met,
    /// The target does not hold.
    Missed,
    /// A figure without a target.
    Info,
    /// Could not be measured in this build.
    Unavailable,
}

impl Verdict {
    /// One word for the table.
    pub fn word(self) -> &'static str {
        match self {
            Self::Met => "ok",
            Self::Missed => "missed",
            Self::Info => "info",
            Self::Unavailable => "n/a",
        }
    }
}

/// One line of the report.
#[derive(Clone, PartialEq, Debug, Serialize)]
pub struct Row {
    /// The category, 1 to 8.
    pub category: u8,
    /// Stable identifier, e.g. `snapshot/4k`.
    pub id: String,
    /// What was measured, for people.
    pub what: String,
    /// The subject's figure.
    pub measured: Option<Figure>,
    /// What the limit is.
    pub limit_what: String,
    /// The limit's figure, in the subject's unit.
    pub limit: Option<Figure>,
    /// Subject over limit (or the fraction of the limit's throughput, or
    /// the slope, or the percentage, as the target says); NaN if none.
    pub ratio: f64,
    /// What the ratio has to be.
    pub target: Target,
    /// Whether it is.
    pub verdict: Verdict,
    /// Anything a reader needs to interpret the row.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl Row {
    /// A row whose verdict follows from `ratio` and `target`.
    pub fn new(category: u8, id: &str, what: &str, measured: Figure, limit: Limit, ratio: f64, target: Target) -> Self {
        Self {
            category,
            id: id.to_string(),
            what: what.to_string(),
            measured: Some(measured),
            limit_what: limit.what,
            limit: limit.figure,
            ratio,
            target,
            verdict: target.judge(ratio),
            note: None,
        }
    }

    /// A row for something this build cannot measure.
    pub fn unavailable(category: u8, id: &str, what: &str, target: Target, why: &str) -> Self {
        Self {
            category,
            id: id.to_string(),
            what: what.to_string(),
            measured: None,
            limit_what: String::new(),
            limit: None,
            ratio: f64::NAN,
            target,
            verdict: Verdict::Unavailable,
            note: Some(why.to_string()),
        }
    }

    /// Adds a note.
    pub fn with_note(mut self, note: impl Into<String>) -> Self {
        self.note = Some(note.into());
        self
    }
}

/// A limit: what it is and, when it is a measurement, its figure.
#[derive(Clone, PartialEq, Debug)]
pub struct Limit {
    /// Description.
    pub what: String,
    /// Measured figure, in the subject's unit.
    pub figure: Option<Figure>,
}

impl Limit {
    /// A measured limit.
    pub fn measured(what: &str, figure: Figure) -> Self {
        Self { what: what.to_string(), figure: Some(figure) }
    }

    /// A limit that is a fixed reference, not a measurement.
    pub fn fixed(what: &str) -> Self {
        Self { what: what.to_string(), figure: None }
    }
}

/// Everything one run reports.
#[derive(Clone, PartialEq, Debug, Serialize)]
pub struct Report {
    /// `quick` or `full`.
    pub mode: String,
    /// Wall time of the run, seconds.
    pub wall_seconds: f64,
    /// Remarks on the run as a whole (reduced sizes in quick mode, …).
    pub notes: Vec<String>,
    /// The figures.
    pub rows: Vec<Row>,
}

const HEADERS: [&str; 6] = ["#", "what", "measured", "limit (same run)", "ratio", "target / verdict"];

impl Report {
    /// The rows as cells of the text table.
    fn cells(&self) -> Vec<[String; 6]> {
        self.rows
            .iter()
            .map(|row| {
                let limit = match &row.limit {
                    Some(figure) => format!("{} ({})", row.limit_what, figure.render()),
                    None => row.limit_what.clone(),
                };
                [
                    row.category.to_string(),
                    row.what.clone(),
                    row.measured.as_ref().map_or("-".to_string(), Figure::render),
                    limit,
                    row.target.render_ratio(row.ratio),
                    format!("{}  {}", row.target.render(), row.verdict.word()),
                ]
            })
            .collect()
    }

    /// A plain-text table with aligned columns, then the notes of rows and
    /// of the run.
    pub fn table(&self) -> String {
        let cells = self.cells();
        let mut widths = HEADERS.map(|h| h.chars().count());
        for row in &cells {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let line = |row: &[String]| {
            let mut out = String::new();
            for (i, (cell, width)) in row.iter().zip(widths).enumerate() {
                let pad = width - cell.chars().count();
                if i == 2 || i == 4 {
                    // Numbers align right.
                    out.push_str(&" ".repeat(pad));
                    out.push_str(cell);
                } else {
                    out.push_str(cell);
                    if i + 1 < row.len() {
                        out.push_str(&" ".repeat(pad));
                    }
                }
                if i + 1 < row.len() {
                    out.push_str("  ");
                }
            }
            out.trim_end().to_string() + "\n"
        };
        let mut out = line(&HEADERS.map(String::from));
        out.push_str(&line(&widths.map(|w| "-".repeat(w))));
        for row in &cells {
            out.push_str(&line(row));
        }
        let notes: Vec<String> = self
            .rows
            .iter()
            .filter_map(|row| row.note.as_ref().map(|note| format!("  {}: {note}", row.id)))
            .chain(self.notes.iter().map(|note| format!("  {note}")))
            .collect();
        if !notes.is_empty() {
            out.push_str("\nnotes:\n");
            for note in notes {
                out.push_str(&note);
                out.push('\n');
            }
        }
        out
    }

    /// Targets met and missed.
    pub fn tally(&self) -> (usize, usize) {
        let count = |v| self.rows.iter().filter(|row| row.verdict == v).count();
        (count(Verdict::Met), count(Verdict::Missed))
    }

    /// The report as pretty-printed JSON (NaN ratios become `null`).
    pub fn json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a report always serialises")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(ratio: f64, target: Target) -> Row {
        Row::new(
            1,
            "snapshot/4k",
            "snapshot, 4K",
            Figure::new(1.834, "ns/slot"),
            Limit::measured("stream", Figure::new(0.25, "ns/slot")),
            ratio,
            target,
        )
    }

    #[test]
    fn verdicts_follow_the_target() {
        assert_eq!(Target::AtMost(3.0).judge(2.9), Verdict::Met);
        assert_eq!(Target::AtMost(3.0).judge(3.0), Verdict::Met);
        assert_eq!(Target::AtMost(3.0).judge(7.3), Verdict::Missed);
        assert_eq!(Target::AtLeast(0.5).judge(0.49), Verdict::Missed);
        assert_eq!(Target::AtLeast(0.5).judge(0.8), Verdict::Met);
        assert_eq!(Target::Faster.judge(0.2), Verdict::Met);
        assert_eq!(Target::Faster.judge(1.0), Verdict::Missed);
        assert_eq!(Target::Flat(0.2).judge(1.19), Verdict::Met);
        assert_eq!(Target::Flat(0.2).judge(0.79), Verdict::Met);
        assert_eq!(Target::Flat(0.2).judge(1.3), Verdict::Missed);
        assert_eq!(Target::PercentAtMost(0.016).judge(0.0098), Verdict::Met);
        assert_eq!(Target::None.judge(5.0), Verdict::Info);
        assert_eq!(Target::AtMost(3.0).judge(f64::NAN), Verdict::Unavailable);
    }

    #[test]
    fn ratios_and_targets_render_in_their_own_units() {
        assert_eq!(Target::AtMost(3.0).render_ratio(7.336), "7.34x");
        assert_eq!(Target::AtLeast(0.5).render_ratio(0.634), "63.4%");
        assert_eq!(Target::PercentAtMost(0.016).render_ratio(0.00977), "0.977%");
        assert_eq!(Target::Flat(0.2).render(), "slope <= 1.20x");
        assert_eq!(Target::AtLeast(0.5).render(), ">= 50.0%");
        assert_eq!(Target::AtMost(1.5).render(), "<= 1.50x");
        assert_eq!(Target::AtMost(1.5).render_ratio(f64::NAN), "-");
    }

    #[test]
    fn numbers_keep_about_three_digits() {
        assert_eq!(fmt_number(1234.5), "1234");
        assert_eq!(fmt_number(12.345), "12.3");
        assert_eq!(fmt_number(1.2345), "1.23");
        assert_eq!(fmt_number(0.12345), "0.123");
        assert_eq!(fmt_number(f64::INFINITY), "-");
    }

    #[test]
    fn table_aligns_columns_and_lists_notes() {
        let report = Report {
            mode: "quick".into(),
            wall_seconds: 1.5,
            notes: vec!["invalidation over 64 MiB, not 1 GiB".into()],
            rows: vec![
                row(7.336, Target::AtMost(3.0)).with_note("the walk converts each entry"),
                Row::unavailable(3, "dmirror/read", "dmirror READ", Target::AtLeast(0.5), "not available yet"),
            ],
        };
        let table = report.table();
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("#  what"), "{table}");
        assert!(lines[1].starts_with("-  ----"), "{table}");
        assert!(lines[2].contains("1.83 ns/slot") && lines[2].contains("7.34x") && lines[2].ends_with("missed"));
        assert!(lines[3].contains("dmirror READ") && lines[3].ends_with("n/a"));
        // The ratio column is right-aligned under its header.
        let ratio_end = lines[0].find("ratio").unwrap() + "ratio".len();
        assert_eq!(lines[2].find("7.34x").map(|i| i + 5), Some(ratio_end), "{table}");
        assert_eq!(&lines[3][ratio_end - 2..ratio_end + 1], " - ", "{table}");
        assert!(table.contains("notes:\n  snapshot/4k: the walk converts each entry\n"));
        assert!(table.contains("  dmirror/read: not available yet\n"));
        assert!(table.ends_with("  invalidation over 64 MiB, not 1 GiB\n"));
        assert_eq!(report.tally(), (0, 1));
    }

    #[test]
    fn json_carries_numbers_units_targets_and_verdicts() {
        let report = Report {
            mode: "full".into(),
            wall_seconds: 2.0,
            notes: vec![],
            rows: vec![
                row(7.336, Target::AtMost(3.0)),
                Row::unavailable(3, "dmirror/read", "dmirror READ", Target::AtLeast(0.5), "later"),
            ],
        };
        let value: serde_json::Value = serde_json::from_str(&report.json()).unwrap();
        let first = &value["rows"][0];
        assert_eq!(value["mode"], "full");
        assert_eq!(first["measured"]["value"], 1.834);
        assert_eq!(first["measured"]["unit"], "ns/slot");
        assert_eq!(first["limit"]["value"], 0.25);
        assert_eq!(first["ratio"], 7.336);
        assert_eq!(first["target"]["kind"], "at_most");
        assert_eq!(first["target"]["value"], 3.0);
        assert_eq!(first["verdict"], "missed");
        assert!(first.get("note").is_none());
        let second = &value["rows"][1];
        assert!(second["ratio"].is_null() && second["measured"].is_null());
        assert_eq!(second["verdict"], "unavailable");
        assert_eq!(second["note"], "later");
    }
}
