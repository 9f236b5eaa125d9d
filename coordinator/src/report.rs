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
    /// (round, accuracy — R² for regression —, validation loss) per row of `metrics.csv`.
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
        // The headline metric: accuracy, or R² for a regression run (whose accuracy is empty).
        let regression = !summary["final"]["r2"].is_null();
        let (round, accuracy, validation) = (col("round"), if regression { col("r2") } else { col("accuracy") }, col("validation_loss"));
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

/// Upload bytes per site per round of a run (`summary.json`'s `transfer`), when it says.
fn upload_per_site_round(run: &RunView) -> Option<f64> {
    let bytes = run.summary["transfer"]["update_bytes"].as_f64()?;
    let sites = run.summary["sites"].as_object().map_or(0, |s| s.len()).max(1) as f64;
    let rounds = run.summary["rounds"].as_f64().filter(|r| *r > 0.0)?;
    Some(bytes / sites / rounds)
}

/// Accuracy against the cumulative bytes a site uploaded (log scale), one curve per run with
/// transfer figures: how much quality each byte buys. A standalone SVG (`None` without any).
pub fn bytes_chart(runs: &[RunView]) -> Option<String> {
    let curves: Vec<(usize, Vec<(f64, f64)>)> = runs
        .iter()
        .enumerate()
        .filter_map(|(i, run)| {
            let per_round = upload_per_site_round(run)?;
            let points = run.curve.iter().filter(|p| p.0 > 0).filter_map(|&(round, acc, _)| acc.map(|a| (per_round * f64::from(round), a))).collect();
            Some((i, points))
        })
        .collect();
    let xs = || curves.iter().flat_map(|(_, c)| c.iter().map(|p| p.0)).filter(|x| *x > 0.0);
    let (lo, hi) = (xs().fold(f64::INFINITY, f64::min), xs().fold(0f64, f64::max));
    if !(lo.is_finite() && hi > 0.0) {
        return None;
    }
    let (lo, hi) = (lo.log10().floor(), hi.log10().ceil().max(lo.log10().floor() + 1.0));
    let (w, h, l, r, t, b) = (760.0, 320.0, 44.0, 150.0, 10.0, 40.0);
    let x = |bytes: f64| l + (w - l - r) * (bytes.log10() - lo) / (hi - lo);
    // The accuracy axis from the lowest point (to a tenth) to 1, so the curves are not squeezed.
    let floor = (curves.iter().flat_map(|(_, c)| c.iter().map(|p| p.1)).fold(1f64, f64::min) * 10.0).floor().clamp(0.0, 9.0) / 10.0;
    let y = |v: f64| t + (h - t - b) * (1.0 - ((v - floor) / (1.0 - floor)).clamp(0.0, 1.0));
    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" width="{w}" height="{h}" font-family="sans-serif" role="img" aria-label="accuracy against upload bytes"><rect width="{w}" height="{h}" fill="white"/>"#
    );
    for g in 0..=4 {
        let v = floor + (1.0 - floor) * f64::from(g) / 4.0;
        let _ = write!(
            s,
            r##"<line x1="{l}" x2="{}" y1="{y}" y2="{y}" stroke="#e4e6eb"/><text x="4" y="{}" font-size="11" fill="#555">{v:.2}</text>"##,
            w - r,
            y(v) + 4.0,
            y = y(v)
        );
    }
    for e in (lo as i32)..=(hi as i32) {
        let bytes = 10f64.powi(e);
        let label = match e {
            e if e >= 6 => format!("{} MB", 10f64.powi(e - 6)),
            e if e >= 3 => format!("{} kB", 10f64.powi(e - 3)),
            _ => format!("{bytes} B"),
        };
        let xv = x(bytes);
        let _ = write!(
            s,
            r##"<line x1="{xv}" x2="{xv}" y1="{t}" y2="{}" stroke="#e4e6eb"/><text x="{}" y="{}" font-size="11" fill="#555">{label}</text>"##,
            h - b,
            xv - 14.0,
            h - b + 16.0
        );
    }
    let _ = write!(s, r##"<text x="{}" y="{}" font-size="12" fill="#333">uploaded by one site, cumulative (log scale) → accuracy</text>"##, l, h - 6.0);
    for (k, (i, points)) in curves.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let pts: Vec<String> = points.iter().map(|&(bx, a)| format!("{:.1},{:.1}", x(bx), y(a))).collect();
        let _ = write!(s, r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#, pts.join(" "));
        let _ = write!(
            s,
            r##"<rect x="{}" y="{}" width="14" height="3" fill="{color}"/><text x="{}" y="{}" font-size="12" fill="#333">{}</text>"##,
            w - r + 10.0,
            t + 14.0 + 18.0 * k as f64,
            w - r + 30.0,
            t + 19.0 + 18.0 * k as f64,
            esc(&runs[*i].name())
        );
    }
    s.push_str("</svg>");
    Some(s)
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
    let base: [(&str, &[&str]); 12] = [
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
        ("update encoding", &["transfer", "update_encoding"]),
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
    row(&mut p, "update bytes per site and round", runs.iter().map(|r| upload_per_site_round(r).map_or("–".into(), |b| format!("{b:.0}"))).collect());
    row(&mut p, "kept model (params sha256)", runs.iter().map(|r| esc(get(r, &["params_sha256"]).as_str().map_or("–", |s| &s[..s.len().min(12)]))).collect());
    p.push_str(if regression { "</table><h2>Accuracy per round (R² for regression runs)</h2>" } else { "</table><h2>Accuracy per round</h2>" });
    p.push_str(&chart(runs));
    if let Some(svg) = bytes_chart(runs) {
        p.push_str("<h2>Accuracy against the bytes a site uploaded</h2>");
        p.push_str(&svg);
    }

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
    std::fs::write(out, html(&runs)).map_err(|e| format!("{}: {e}", out.display()))?;
    // The bytes chart also as a picture of its own, beside the page.
    if let Some(svg) = bytes_chart(&runs) {
        let path = out.with_extension("bytes.svg");
        std::fs::write(&path, svg).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
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
        assert!(!out.with_extension("bytes.svg").exists(), "no transfer figures, no bytes chart");
    }

    #[test]
    fn runs_with_transfer_figures_get_accuracy_against_bytes() {
        let root = tempfile::tempdir().unwrap();
        let with_bytes = |name: &str, bytes: u64| {
            let dir = run_dir(root.path(), name, 5, 0.8);
            let path = dir.join("summary.json");
            let mut summary: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            summary["transfer"] = serde_json::json!({ "update_bytes": bytes, "update_encoding": name });
            summary["sites"] = serde_json::json!({ "a": {}, "b": {} });
            std::fs::write(&path, summary.to_string()).unwrap();
            dir
        };
        let (f32, topk) = (with_bytes("f32", 64_000), with_bytes("topk", 3_200));
        let out = root.path().join("c.html");
        run(&[f32, topk], &out).unwrap();
        let svg = std::fs::read_to_string(out.with_extension("bytes.svg")).unwrap();
        assert_eq!(svg.matches("<polyline").count(), 2, "{svg}");
        // 64,000 bytes over 2 sites and 2 rounds: 16 kB a site and round; top-k 800 B.
        assert!(svg.contains("1 kB") && svg.contains("10 kB") && svg.contains("100 B"), "the axis spans both: {svg}");
        let page = std::fs::read_to_string(&out).unwrap();
        assert!(page.contains("16000") && page.contains("800"), "bytes per site and round in the table");
    }
}
