//! A readable difference between the approved task and the one a coordinator sends.

use std::collections::BTreeMap;

use flotilla_common::Task;

/// Lines `key: approved …, the coordinator's …`, one per setting that differs, in key order.
pub fn task_diff(approved: &Task, offered: &Task) -> Vec<String> {
    let (a, b) = (flatten(approved), flatten(offered));
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| {
            let shown = |v: Option<&String>| v.map_or_else(|| "(absent)".to_owned(), |v| shorten(v));
            format!("{k}: approved {}, the coordinator's {}", shown(a.get(k)), shown(b.get(k)))
        })
        .collect()
}

fn flatten(task: &Task) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    // Plain structs of strings and numbers always serialise.
    if let Ok(value) = toml::Value::try_from(task) {
        walk("", &value, &mut out);
    }
    out
}

fn walk(prefix: &str, value: &toml::Value, out: &mut BTreeMap<String, String>) {
    match value {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                walk(&key, v, out);
            }
        }
        other => {
            out.insert(prefix.to_owned(), other.to_string());
        }
    }
}

/// A coordinator's value can be long (a hostile one especially): cut at a character.
fn shorten(v: &str) -> String {
    if v.chars().count() <= 80 { v.to_owned() } else { format!("{}…", v.chars().take(80).collect::<String>()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_diff_names_each_changed_setting() {
        let approved = Task::hospitals();
        let mut offered = approved.clone();
        offered.training.batch_size = 1;
        offered.data.label.column = "sex".into();
        offered.data.drop.push("age".into());
        let diff = task_diff(&approved, &offered);
        assert_eq!(diff.len(), 3, "{diff:?}");
        assert!(diff.contains(&"training.batch_size: approved 32, the coordinator's 1".to_owned()), "{diff:?}");
        assert!(diff.iter().any(|d| d.starts_with("data.label.column: approved \"num\", the coordinator's \"sex\"")), "{diff:?}");
        assert!(task_diff(&approved, &approved).is_empty());
    }
}
