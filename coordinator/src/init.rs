//! `init`: a commented task file drafted from a sample of a CSV, so that nobody starts a
//! federation by writing TOML by hand. It looks at each column the way a site's inference
//! will (numbers, words, distinct values, spellings of "missing") and says what it decided.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;

use flotilla_common::data::RawTable;
use flotilla_common::data::rows::ValueProfile;
use flotilla_common::task::{DEFAULT_MISSING, Task};

/// Rows looked at; the rest of a large file is not needed to draft a task.
pub const SAMPLE_ROWS: usize = 100_000;

/// What `init` decided about one column.
#[derive(Debug, Clone, PartialEq)]
pub enum ColumnRole {
    Label,
    Numeric,
    Categorical {
        distinct: u64,
    },
    /// Dropped, with the reason written next to it.
    Drop(String),
}

/// A drafted task: the TOML and, per column, what was decided.
#[derive(Debug, Clone)]
pub struct Draft {
    pub toml: String,
    pub columns: Vec<(String, ColumnRole)>,
    /// Spellings of "missing" seen in the sample, with how many fields had them.
    pub missing_seen: BTreeMap<String, u64>,
}

/// Drafts a task for `table` with `label` as its label column.
pub fn draft(table: &RawTable, label: &str, name: &str) -> Result<Draft, String> {
    let label_index = table
        .column_index(label)
        .ok_or_else(|| format!("{}: label column `{label}` is not in the header ({})", table.source.display(), table.header.join(", ")))?;
    let rows = &table.rows[..table.rows.len().min(SAMPLE_ROWS)];
    if rows.is_empty() {
        return Err(format!("{}: no data rows", table.source.display()));
    }
    let is_missing = |v: &str| v.is_empty() || DEFAULT_MISSING.contains(&v);
    let mut missing_seen: BTreeMap<String, u64> = BTreeMap::new();
    let mut columns = Vec::new();
    for (i, column) in table.header.iter().enumerate() {
        let values = rows.iter().map(|r| r.fields[i].as_str());
        for v in values.clone().filter(|v| !v.is_empty() && is_missing(v)) {
            *missing_seen.entry(v.to_owned()).or_default() += 1;
        }
        let p = ValueProfile::of(values.filter(|v| !is_missing(v)));
        let role = if i == label_index {
            ColumnRole::Label
        } else if p.values == 0 {
            ColumnRole::Drop("every value is missing".into())
        } else if p.distinct == 1 {
            ColumnRole::Drop("a single value: it carries nothing".into())
        } else if p.looks_like_identifier() {
            ColumnRole::Drop(format!("every one of its {} values is distinct, as in an identifier", p.values))
        } else if !p.mostly_text() {
            ColumnRole::Numeric
        } else if p.too_many_categories(flotilla_common::task::default_max_inferred_categories()) {
            ColumnRole::Drop(format!("{} distinct words in {} rows: free text or an identifier, not a category", p.distinct, p.values))
        } else {
            ColumnRole::Categorical { distinct: p.distinct }
        };
        columns.push((column.clone(), role));
    }
    let label_spec = label_rule(rows.iter().map(|r| r.fields[label_index].as_str()).filter(|v| !is_missing(v)), label)?;
    let unlabelled = rows.iter().filter(|r| is_missing(&r.fields[label_index])).count();
    let toml = render(name, table, &columns, &missing_seen, &label_spec, unlabelled);
    Task::from_toml(&toml, "the drafted task").map_err(|e| format!("the drafted task does not parse (please report this): {e}"))?;
    Ok(Draft { toml, columns, missing_seen })
}

/// The `[data.label]` lines for the label's values, with a comment on the choice.
fn label_rule<'a>(values: impl Iterator<Item = &'a str>, label: &str) -> Result<String, String> {
    let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
    for v in values {
        *counts.entry(v).or_default() += 1;
    }
    let numbers: Option<Vec<f64>> = counts.keys().map(|v| v.parse::<f64>().ok().filter(|x| x.is_finite())).collect();
    let quote = |v: &str| toml::Value::String(v.to_owned()).to_string();
    match (counts.len(), numbers) {
        (0 | 1, _) => Err(format!("label column `{label}` has {} distinct value(s) in the sample: nothing to learn", counts.len())),
        (2, Some(mut xs)) => {
            xs.sort_by(f64::total_cmp);
            Ok(format!("# Two values, {} and {}: the larger is the positive class.\npositive_above = {}\n", xs[0], xs[1], xs[0]))
        }
        (_, Some(mut xs)) if xs.iter().all(|x| x.fract() == 0.0 && *x >= 0.0) && xs.len() <= 10 => {
            xs.sort_by(f64::total_cmp);
            Ok(format!(
                "# Whole numbers {} to {}: drafted as \"above {} is positive\" (as UCI's `num`, where 0 is no disease).\n\
                 # For one class per value, use `classes = [...]` instead.\npositive_above = {}\n",
                xs[0],
                xs[xs.len() - 1],
                xs[0],
                xs[0]
            ))
        }
        (n, Some(_)) => Ok(format!(
            "# {n} distinct numbers: a regression target (mean squared error; MAE, RMSE and R² reported).\n\
             # To predict classes instead, threshold it: `positive_above = VALUE` in place of `kind`.\nkind = \"regression\"\n"
        )),
        (2, None) => {
            // The rarer value is drafted as positive (what a study usually counts: disease, default).
            let mut by_count: Vec<(&str, u64)> = counts.into_iter().collect();
            by_count.sort_by(|a, b| a.1.cmp(&b.1).then(a.0.cmp(b.0)));
            Ok(format!("# Two values: the rarer, {}, is drafted as the positive class.\npositive_values = [{}]\n", quote(by_count[0].0), quote(by_count[0].0)))
        }
        (n, None) if n <= 50 => {
            let classes: Vec<String> = counts.keys().map(|v| quote(v)).collect();
            Ok(format!("# {n} values: one class each.\nclasses = [{}]\n", classes.join(", ")))
        }
        (n, None) => Err(format!("label column `{label}` has {n} distinct values: too many classes for a label")),
    }
}

fn render(name: &str, table: &RawTable, columns: &[(String, ColumnRole)], missing_seen: &BTreeMap<String, u64>, label_spec: &str, unlabelled: usize) -> String {
    let quote = |v: &str| toml::Value::String(v.to_owned()).to_string();
    let list = |names: Vec<&str>| names.into_iter().map(quote).collect::<Vec<_>>().join(", ");
    let label = columns.iter().find(|(_, r)| *r == ColumnRole::Label).map_or("", |(c, _)| c.as_str());
    let mut t = String::new();
    let _ = writeln!(t, "# Drafted by `flotilla-coordinator init` from {} ({} rows looked at).", table.source.display(), table.rows.len().min(SAMPLE_ROWS));
    let _ = writeln!(t, "# Read it before you use it: every choice below is a guess from one file, and the");
    let _ = writeln!(t, "# federation's sites decide the column types again from all their rows.");
    let _ = writeln!(t, "name = {}\n", quote(name));
    let _ = writeln!(t, "# The seed article's model: inputs -> 64 -> 32 -> output, ReLU.\n[model]\nhidden = [64, 32]\n");
    let _ = writeln!(t, "[training]\nlocal_epochs = 5\nbatch_size = 32\nlearning_rate = 0.001\n");
    let _ = writeln!(t, "[data]");
    let drops: Vec<(&str, &str)> =
        columns.iter().filter_map(|(c, r)| if let ColumnRole::Drop(why) = r { Some((c.as_str(), why.as_str())) } else { None }).collect();
    for (c, why) in &drops {
        let _ = writeln!(t, "# drop `{c}`: {why}.");
    }
    let _ = writeln!(t, "drop = [{}]", list(drops.iter().map(|(c, _)| *c).collect()));
    let categorical: Vec<(&str, u64)> =
        columns.iter().filter_map(|(c, r)| if let ColumnRole::Categorical { distinct } = r { Some((c.as_str(), *distinct)) } else { None }).collect();
    let numeric: Vec<&str> = columns.iter().filter(|(_, r)| *r == ColumnRole::Numeric).map(|(c, _)| c.as_str()).collect();
    let _ = writeln!(
        t,
        "# Categorical (mostly words): {}.",
        if categorical.is_empty() { "none".to_owned() } else { categorical.iter().map(|(c, n)| format!("{c} ({n} values)")).collect::<Vec<_>>().join(", ") }
    );
    let _ = writeln!(t, "# Numeric: {}.", if numeric.is_empty() { "none".to_owned() } else { numeric.join(", ") });
    let _ = writeln!(t, "# A numeric code for categories (1 = typical angina, ...) looks numeric: list such columns here.");
    let _ = writeln!(t, "categorical = [{}]", list(categorical.iter().map(|(c, _)| *c).collect()));
    if missing_seen.is_empty() {
        let _ = writeln!(t, "# No spelling of \"missing\" besides empty fields was found; the defaults stay on.");
    } else {
        let seen: Vec<String> = missing_seen.iter().map(|(v, n)| format!("`{v}` ({n} fields)")).collect();
        let _ = writeln!(t, "# Spellings of \"missing\" found: {}. They are among the defaults (`missing`), read as missing.", seen.join(", "));
    }
    let _ = writeln!(t, "# A value that means \"not measured\" in one column (say a cholesterol of 0) goes in");
    let _ = writeln!(t, "# [data.missing_values], e.g. chol = [\"0\"].");
    if unlabelled > 0 {
        // A row without a label cannot be learnt from; with `reject` the first one would stop the site.
        let _ = writeln!(t, "# {unlabelled} rows have no `{label}`: they are skipped, and counted and named in the site's log.");
        let _ = writeln!(t, "bad_rows = \"skip\"");
    } else {
        let _ = writeln!(t, "bad_rows = \"reject\"");
    }
    let _ = writeln!(t, "test_fraction = 0.2\nvalidation_fraction = 0.1\n");
    let _ = writeln!(t, "[data.label]\ncolumn = {}\n{label_spec}", quote(label));
    t
}

/// `init`: drafts the task and writes it to `out` (refusing to replace a file unless `force`).
pub fn run(data: &Path, label: &str, out: &Path, force: bool) -> Result<Draft, String> {
    if out.exists() && !force {
        return Err(format!("{} exists: choose another --out, or replace it with --force", out.display()));
    }
    let table = RawTable::read(data).map_err(|e| e.to_string())?;
    let name = data.file_stem().and_then(|s| s.to_str()).unwrap_or("federation");
    let d = draft(&table, label, name)?;
    std::fs::write(out, &d.toml).map_err(|e| format!("{}: {e}", out.display()))?;
    Ok(d)
}

/// One line per column for the terminal.
pub fn describe(d: &Draft) -> String {
    let mut s = String::new();
    for (c, role) in &d.columns {
        let what = match role {
            ColumnRole::Label => "label".to_owned(),
            ColumnRole::Numeric => "numeric".to_owned(),
            ColumnRole::Categorical { distinct } => format!("categorical ({distinct} values)"),
            ColumnRole::Drop(why) => format!("dropped: {why}"),
        };
        let _ = writeln!(s, "  {c:<24} {what}");
    }
    let seen: BTreeSet<&str> = d.missing_seen.keys().map(String::as_str).collect();
    if !seen.is_empty() {
        let _ = writeln!(s, "  missing spellings found: {}", seen.into_iter().collect::<Vec<_>>().join(" "));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> RawTable {
        RawTable::from_reader(text.as_bytes(), Path::new("study.csv")).unwrap()
    }

    #[test]
    fn an_r_export_with_na_gets_numeric_columns_and_an_id_dropped() {
        let mut text = String::from("\"id\",\"age\",\"chol\",\"smoker\",\"outcome\"\n");
        for i in 0..60 {
            let chol = if i % 7 == 0 { "NA".to_owned() } else { (180 + (i * 7) % 40).to_string() };
            let smoker = ["yes", "no", "NA"][i % 3];
            let _ = writeln!(text, "{},{},{chol},{smoker},{}", 1000 + i, 40 + i % 30, ["alive", "dead"][usize::from(i % 4 == 0)]);
        }
        let d = draft(&table(&text), "outcome", "study").unwrap();
        let role = |c: &str| d.columns.iter().find(|(n, _)| n == c).map(|(_, r)| r.clone()).unwrap();
        assert!(matches!(role("id"), ColumnRole::Drop(why) if why.contains("identifier")));
        assert_eq!(role("chol"), ColumnRole::Numeric, "NA is missing, not a category");
        assert_eq!(role("age"), ColumnRole::Numeric);
        assert_eq!(role("smoker"), ColumnRole::Categorical { distinct: 2 });
        assert_eq!(d.missing_seen["NA"], 9 + 20);
        let task = Task::from_toml(&d.toml, "draft").unwrap();
        assert_eq!(task.data.drop, vec!["id"]);
        assert_eq!(task.data.label.positive_values, Some(vec!["dead".to_owned()]), "the rarer value is positive");
        assert!(d.toml.contains("# drop `id`"), "{}", d.toml);
    }

    #[test]
    fn labels_are_drafted_by_their_values_and_many_numbers_are_a_regression_target() {
        let rows = |labels: &[&str]| -> String {
            let mut t = String::from("x,y\n");
            for (i, l) in labels.iter().enumerate() {
                let _ = writeln!(t, "{i},{l}");
            }
            t
        };
        let task = |labels: &[&str]| Task::from_toml(&draft(&table(&rows(labels)), "y", "t").unwrap().toml, "t").unwrap();
        assert_eq!(task(&["0", "1", "1", "0"]).data.label.positive_above, Some(0.0));
        assert_eq!(task(&["0", "3", "1", "2"]).data.label.positive_above, Some(0.0));
        assert_eq!(task(&["a", "b", "c", "a"]).data.label.classes, Some(vec!["a".into(), "b".into(), "c".into()]));
        let regression = task(&["1.5", "2.25", "3.5", "7.1"]);
        assert!(regression.data.label.is_regression(), "many distinct numbers are a regression target");
        let err = draft(&table(&rows(&["1", "2"])), "z", "t").unwrap_err();
        assert!(err.contains("`z` is not in the header"), "{err}");
    }
}
