//! `report`: one self-contained HTML page comparing finished runs side by side — the
//! settings that differ, the kept models' figures, the curves, per-site results, privacy —
//! from each run directory's `summary.json` and `metrics.csv`. No script, no external asset.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde_json::Value;

/// One run as the report reads it.
#[derive(Debug, Clone)]
pub struct RunView {
    pub dir: PathBuf,
    pub summary: Value,
    /// (round, accuracy, validation loss) per row of `metrics.csv`.
    pub curve: Vec<(u32, Option<f64>, Option<f64>)>,
}

impl RunView {
    /// Reads a finished run's directory; names the file that is missing or unreadable.
    pub fn read(dir: &Path) -> Result<Self, String> {
        let path = dir.join("summary.json");
        let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e} (is it a finished run's directory?)", path.display()))?;
        let summary: Value = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let path = dir.join("metrics.csv");
        let mut reader = csv::Reader::from_path(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let headers = reader.headers().map_err(|e| format!("{}: {e}", path.display()))?.clone();
        let col = |name: &str| headers.iter().position(|h| h == name);
        let (round, accuracy, validation) = (col("round"), col("accuracy"), col("validation_loss"));
        let mut curve = Vec::new();
        for (i, record) in reader.records().enumerate() {
            let record = record.map_err(|e| format!("{}: row {}: {e}", path.display(), i + 2))?;
            let num = |c: Option<usize>| c.and_then(|c| record.get(c)).and_then(|v| v.parse::<f64>().ok());
            let r = num(round).ok_or_else(|| format!("{}: row {}: no round", path.display(), i + 2))?;
            curve.push((r as u32, num(accuracy), num(validation)));
        }
        Ok(Self { dir: dir.to_owned(), summary, curve })
    }

    fn name(&self) -> String {
        self.dir.file_name().map_or_else(|| self.dir.display().to_string(), |n| n.to_string_lossy().into_owned())
    }
}

/// Escapes text for HTML.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// `config` flattened to `a.b.c = value` lines.
fn flatten(prefix: &str, v: &Value, out: &mut BTreeMap<String, String>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                flatten(&if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") }, v, out);
            }
        }
        other => {
            out.insert(prefix.to_owned(), other.to_string());
        }
    }
}

fn fmt(v: &Value) -> String {
    match v.as_f64() {
        Some(x) if v.is_f64() => format!("{x:.3}"),
        _ if v.is_null() => "–".into(),
        _ => esc(v.to_string().trim_matches('"')),
    }
}

const COLORS: [&str; 6] = ["#2f6fed", "#d9480f", "#1a7f37", "#8250df", "#b42318", "#7a7a7a"];

/// The accuracy curves of every run, as an inline SVG.
fn chart(runs: &[RunView]) -> String {
    let (w, h, l, r, t, b) = (760.0, 300.0, 44.0, 12.0, 10.0, 28.0);
    let last = runs.iter().flat_map(|v| v.curve.iter().map(|p| p.0)).max().unwrap_or(1).max(1) as f64;
    let x = |round: u32| l + (w - l - r) * f64::from(round) / last;
    let y = |v: f64| t + (h - t - b) * (1.0 - v.clamp(0.0, 1.0));
    let mut s = format!(r#"<svg viewBox="0 0 {w} {h}" width="100%" role="img" aria-label="accuracy per round">"#);
    for g in 0..=4 {
        let v = f64::from(g) / 4.0;
        let _ = write!(s, r##"<line x1="{l}" x2="{}" y1="{y}" y2="{y}" stroke="#e4e6eb"/><text x="4" y="{}">{v:.2}</text>"##, w - r, y(v) + 4.0, y = y(v));
    }
    for g in 0..=5 {
        let round = (last * f64::from(g) / 5.0).round() as u32;
        let _ = write!(s, r#"<text x="{}" y="{}">{round}</text>"#, x(round) - 6.0, h - 8.0);
    }
    for (i, run) in runs.iter().enumerate() {
        let points: Vec<String> = run.curve.iter().filter_map(|&(round, acc, _)| acc.map(|a| format!("{:.1},{:.1}", x(round), y(a)))).collect();
        let _ = write!(s, r#"<polyline fill="none" stroke="{}" stroke-width="2" points="{}"/>"#, COLORS[i % COLORS.len()], points.join(" "));
    }
    s.push_str("</svg>");
    s
}

/// The page comparing `runs`.
pub fn html(runs: &[RunView]) -> String {
    let mut p = String::from(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Flotilla — runs compared</title><style>\
         body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#1d2433}table{border-collapse:collapse;margin:8px 0 20px}\
         th,td{padding:4px 10px;border-bottom:1px solid #e4e6eb;text-align:left}td.n{text-align:right;font-variant-numeric:tabular-nums}\
         svg text{font-size:11px;fill:#555}.key i{display:inline-block;width:14px;height:3px;margin:0 4px 0 12px;vertical-align:middle}</style></head><body>",
    );
    let _ = write!(p, "<h1>{} runs compared</h1>", runs.len());
    p.push_str("<table><tr><th></th>");
    for (i, r) in runs.iter().enumerate() {
        let _ = write!(p, "<th><span class=\"key\"><i style=\"background:{}\"></i></span>{}</th>", COLORS[i % COLORS.len()], esc(&r.name()));
    }
    p.push_str("</tr>");
    let row = |p: &mut String, label: &str, cells: Vec<String>| {
        let _ = write!(p, "<tr><th>{}</th>{}</tr>", esc(label), cells.into_iter().map(|c| format!("<td class=\"n\">{c}</td>")).collect::<String>());
    };
    let get = |r: &RunView, path: &[&str]| path.iter().fold(&r.summary, |v, k| &v[*k]).clone();
    let regression = runs.iter().any(|r| !get(r, &["final", "r2"]).is_null());
    let base: [(&str, &[&str]); 11] = [
        ("task", &["task"]),
        ("rounds", &["rounds"]),
        ("kept round", &["models", "model.safetensors", "round"]),
        ("accuracy (pooled test)", &["final", "accuracy"]),
        ("ROC AUC", &["final", "auc"]),
        ("loss", &["final", "loss"]),
        ("centralised accuracy", &["baselines", "centralized", "accuracy"]),
        ("local-only mean accuracy", &["baselines", "local_mean_accuracy"]),
        ("held-out accuracy", &["holdout", "accuracy"]),
        ("ε (central DP)", &["epsilon"]),
        ("ε per record (DP-SGD)", &["record_epsilon"]),
    ];
    let mut figures = base.to_vec();
    if regression {
        figures.splice(
            3..3,
            [
                ("R² (pooled test)", &["final", "r2"][..]),
                ("RMSE", &["final", "rmse"]),
                ("MAE", &["final", "mae"]),
                ("centralised R²", &["baselines", "centralized", "r2"]),
                ("local-only mean R²", &["baselines", "local_mean_r2"]),
            ],
        );
    }
    for (label, path) in figures {
        row(&mut p, label, runs.iter().map(|r| fmt(&get(r, path))).collect());
    }
    row(&mut p, "seconds", runs.iter().map(|r| fmt(&get(r, &["timings", "total_seconds"]))).collect());
    row(&mut p, "kept model (params sha256)", runs.iter().map(|r| esc(get(r, &["params_sha256"]).as_str().map_or("–", |s| &s[..s.len().min(12)]))).collect());
    p.push_str("</table><h2>Accuracy per round</h2>");
    p.push_str(&chart(runs));

    p.push_str("<h2>Settings that differ</h2>");
    let configs: Vec<BTreeMap<String, String>> = runs
        .iter()
        .map(|r| {
            let mut m = BTreeMap::new();
            flatten("", &r.summary["config"], &mut m);
            m
        })
        .collect();
    let keys: BTreeSet<&String> = configs.iter().flat_map(|c| c.keys()).collect();
    let differing: Vec<&&String> = keys.iter().filter(|k| configs.iter().map(|c| c.get(**k)).collect::<BTreeSet<_>>().len() > 1).collect();
    if differing.is_empty() {
        p.push_str("<p>The runs were made with the same settings.</p>");
    } else {
        p.push_str("<table>");
        for k in differing {
            row(&mut p, k, configs.iter().map(|c| esc(c.get(*k).map_or("–", String::as_str))).collect());
        }
        p.push_str("</table>");
    }

    p.push_str("<h2>Per site (accuracy of the kept model on each site's test split)</h2><table>");
    let sites: BTreeSet<String> = runs.iter().filter_map(|r| r.summary["final"]["per_site"].as_object()).flat_map(|m| m.keys().cloned()).collect();
    for site in &sites {
        row(&mut p, site, runs.iter().map(|r| fmt(&r.summary["final"]["per_site"][site]["accuracy"])).collect());
    }
    p.push_str("</table></body></html>\n");
    p
}

/// `report`: reads the runs and writes the page.
pub fn run(dirs: &[PathBuf], out: &Path) -> Result<(), String> {
    if dirs.is_empty() {
        return Err("name at least one run directory".into());
    }
    let runs = dirs.iter().map(|d| RunView::read(d)).collect::<Result<Vec<_>, _>>()?;
    std::fs::write(out, html(&runs)).map_err(|e| format!("{}: {e}", out.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_dir(root: &Path, name: &str, epochs: u32, accuracy: f64) -> PathBuf {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let summary = serde_json::json!({
            "task": "<hospitals>", "rounds": 2,
            "final": { "accuracy": accuracy, "per_site": { "Cleveland": { "accuracy": accuracy } } },
            "config": { "seed": 42, "training": { "local_epochs": epochs } },
            "models": { "model.safetensors": { "round": 1 } },
        });
        std::fs::write(dir.join("summary.json"), summary.to_string()).unwrap();
        std::fs::write(dir.join("metrics.csv"), format!("round,accuracy,validation_loss\n0,0.5,0.7\n1,{accuracy},0.4\n2,0.7,\n")).unwrap();
        dir
    }

    #[test]
    fn a_report_shows_what_differs_and_escapes_what_runs_say() {
        let root = tempfile::tempdir().unwrap();
        let (a, b) = (run_dir(root.path(), "five-epochs", 5, 0.81), run_dir(root.path(), "one-epoch", 1, 0.78));
        let out = root.path().join("r.html");
        run(&[a, b], &out).unwrap();
        let page = std::fs::read_to_string(&out).unwrap();
        assert!(page.contains("five-epochs") && page.contains("one-epoch"));
        assert!(page.contains("training.local_epochs") && !page.contains(">seed<"), "only the settings that differ are listed");
        assert!(page.contains("0.810") && page.contains("0.780") && page.contains("Cleveland"));
        assert!(page.contains("&lt;hospitals&gt;") && !page.contains("<hospitals>"), "text from a run is escaped");
        assert_eq!(page.matches("<polyline").count(), 2);
        let err = run(&[root.path().join("nothing")], &out).unwrap_err();
        assert!(err.contains("summary.json") && err.contains("finished run"), "{err}");
    }
}
