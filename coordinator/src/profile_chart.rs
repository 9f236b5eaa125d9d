//! The picture of a data profile (`profile.svg`): a grid of feature columns by sites, each
//! cell shaded by the share of missing values and labelled with the site's drift (its mean
//! against the other sites', in the federation's deviations); flagged cells are outlined.

use std::path::Path;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::profile::Profile;

/// Draws the profile; with many sites the cells narrow, so the file stays readable.
pub fn write(path: &Path, p: &Profile) -> Result<(), Box<dyn std::error::Error>> {
    let sites: Vec<&String> = p.sites.keys().collect();
    let cell_w: i32 = if sites.len() > 12 { 48 } else { 110 };
    let (cell_h, left, top) = (24i32, 170i32, 96i32);
    let width = (left + cell_w * sites.len() as i32 + 24).max(560) as u32;
    let height = (top + cell_h * p.columns.len() as i32 + 60) as u32;
    let root = SVGBackend::new(path, (width, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let font = |size: u32| ("sans-serif", size).into_font();
    let centred = Pos::new(HPos::Center, VPos::Center);
    root.draw(&Text::new(format!("Federated data profile: {} finding(s), k = {}", p.flags.len(), p.k), (12, 14), font(22)))?;
    root.draw(&Text::new("cell: share missing (white 0 → red 1); number: site mean − other sites' mean, in deviations", (12, 38), font(14)))?;
    for (j, site) in sites.iter().enumerate() {
        let x = left + cell_w * j as i32 + cell_w / 2;
        let s = &p.sites[*site];
        let name: String = site.chars().take(if cell_w < 60 { 6 } else { 14 }).collect();
        root.draw(&Text::new(name, (x, top - 34), font(14).color(&BLACK).pos(centred)))?;
        let balance = s.label_counts.as_ref().and_then(|c| {
            let n: u64 = c.iter().sum();
            (n > 0 && c.len() == 2).then(|| format!("{} · {:.0}% +", s.train_rows, 100.0 * c[1] as f64 / n as f64))
        });
        root.draw(&Text::new(balance.unwrap_or_else(|| s.train_rows.to_string()), (x, top - 16), font(12).color(&RGBColor(90, 90, 90)).pos(centred)))?;
    }
    for (i, column) in p.columns.iter().enumerate() {
        let y = top + cell_h * i as i32;
        let label = format!("{} ({})", column.name, if column.kind == "numeric" { "num" } else { "cat" });
        root.draw(&Text::new(label, (left - 8, y + cell_h / 2), font(14).color(&BLACK).pos(Pos::new(HPos::Right, VPos::Center))))?;
        for (j, site) in sites.iter().enumerate() {
            let x = left + cell_w * j as i32;
            let flagged = p.flags.iter().any(|f| f.site.as_ref() == Some(*site) && f.column.as_ref() == Some(&column.name));
            let (fill, text) = match column.sites.get(*site) {
                Some(c) => {
                    let m = c.missing_share.clamp(0.0, 1.0);
                    let shade = (255.0 - 200.0 * m) as u8;
                    let text = c
                        .drift_z
                        .map_or_else(|| if c.categories.is_empty() { String::new() } else { format!("{} cat", c.categories.len()) }, |z| format!("{z:+.1}"));
                    (RGBColor(255, shade, shade), text)
                }
                None => (RGBColor(200, 200, 200), "absent".to_owned()),
            };
            root.draw(&Rectangle::new([(x, y), (x + cell_w - 2, y + cell_h - 2)], fill.filled()))?;
            if flagged {
                root.draw(&Rectangle::new([(x, y), (x + cell_w - 2, y + cell_h - 2)], ShapeStyle { color: BLACK.to_rgba(), filled: false, stroke_width: 2 }))?;
            }
            root.draw(&Text::new(text, (x + cell_w / 2, y + cell_h / 2), font(13).color(&BLACK).pos(centred)))?;
        }
    }
    let footer = top + cell_h * p.columns.len() as i32 + 20;
    let note = if p.flags.is_empty() { "no finding".to_owned() } else { "outlined: a finding (see profile.json `flags`)".to_owned() };
    root.draw(&Text::new(note, (12, footer), font(14)))?;
    root.present()?;
    Ok(())
}
