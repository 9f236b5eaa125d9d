//! Cleaning: a raw table becomes labelled rows of feature values under the task's data spec.
//!
//! Empty fields (and the spec's extra missing spellings) become missing values. A row whose
//! label or numeric field cannot be parsed is reported with file, line and column, and the
//! spec decides whether that stops the site or the row is skipped and counted.

use std::collections::{BTreeSet, HashMap, HashSet};

use crate::error::{DataError, Location};
use crate::task::{BadRows, Categorical, DataSpec, LabelRule};

use super::plan::OTHER_CATEGORY;
use super::table::RawTable;

/// One cleaned row: a class label and the raw text of each feature (`None` = missing).
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub line: u64,
    pub label: u32,
    pub values: Vec<Option<String>>,
}

/// A site's cleaned rows, with the feature columns they follow and what was skipped.
#[derive(Debug, Clone)]
pub struct SiteRows {
    /// Feature column names, in the site's file order.
    pub columns: Vec<String>,
    /// For each feature column: true when it is categorical at this site.
    pub categorical: Vec<bool>,
    pub rows: Vec<Row>,
    /// Rows skipped under `bad_rows = "skip"`, each with its reason (file, line, column).
    pub skipped: Vec<String>,
}

impl SiteRows {
    /// Cleans and labels a table.
    pub fn from_table(table: &RawTable, spec: &DataSpec) -> Result<Self, DataError> {
        let rule = spec.label.rule().map_err(|e| DataError::Spec(e.to_string()))?;
        let label_idx = table
            .column_index(&spec.label.column)
            .ok_or_else(|| DataError::File { file: table.source.clone(), message: format!("label column `{}` is not in the header", spec.label.column) })?;
        let dropped: BTreeSet<&str> = spec.drop.iter().map(String::as_str).collect();
        let features: Vec<usize> = (0..table.header.len()).filter(|&i| i != label_idx && !dropped.contains(table.header[i].as_str())).collect();
        if features.is_empty() {
            return Err(DataError::File { file: table.source.clone(), message: "no feature columns left after drop".into() });
        }
        if let Categorical::Listed(list) = &spec.categorical
            && let Some(missing) = list.iter().find(|c| !table.header.contains(c) && !table.withheld.contains(c))
        {
            return Err(DataError::File { file: table.source.clone(), message: format!("categorical column `{missing}` is not in the header") });
        }
        let columns: Vec<String> = features.iter().map(|&i| table.header[i].clone()).collect();
        let missing_spellings: Vec<&[String]> = columns.iter().map(|c| spec.missing_values.get(c).map_or(&[][..], Vec::as_slice)).collect();
        let is_missing = |j: usize, v: &str| v.is_empty() || missing_spellings[j].iter().any(|m| m == v);

        let categorical: Vec<bool> = match &spec.categorical {
            Categorical::Listed(list) => columns.iter().map(|c| list.contains(c)).collect(),
            // Inference: a column with any non-missing, non-numeric value at this site.
            Categorical::Rule(_) => features
                .iter()
                .enumerate()
                .map(|(j, &i)| {
                    table.rows.iter().any(|r| {
                        let v = &r.fields[i];
                        !is_missing(j, v) && v.parse::<f64>().is_err()
                    })
                })
                .collect(),
        };

        let mut rows = Vec::with_capacity(table.rows.len());
        let mut skipped = Vec::new();
        for raw in &table.rows {
            let at = |column: &str| Location { file: table.source.clone(), line: raw.line, column: Some(column.to_owned()) };
            let parsed = parse_label(&raw.fields[label_idx], &rule).map_err(|m| DataError::Row { at: at(&spec.label.column), message: m }).and_then(|label| {
                let mut values = Vec::with_capacity(features.len());
                for (j, &i) in features.iter().enumerate() {
                    let v = &raw.fields[i];
                    if is_missing(j, v) {
                        values.push(None);
                        continue;
                    }
                    if !categorical[j] {
                        match v.parse::<f64>() {
                            Ok(x) if x.is_finite() => {}
                            _ => {
                                return Err(DataError::Row {
                                    at: at(&columns[j]),
                                    // The value itself is not repeated: error messages end up in logs,
                                    // and logs must not carry data.
                                    message: "the value is not a number, and the column is numeric".into(),
                                });
                            }
                        }
                    }
                    values.push(Some(v.clone()));
                }
                Ok(Row { line: raw.line, label, values })
            });
            match (parsed, spec.bad_rows) {
                (Ok(row), _) => rows.push(row),
                (Err(e), BadRows::Reject) => return Err(e),
                (Err(e), BadRows::Skip) => skipped.push(e.to_string()),
            }
        }
        if rows.is_empty() {
            return Err(DataError::File { file: table.source.clone(), message: "no usable rows".into() });
        }
        Ok(Self { columns, categorical, rows, skipped })
    }

    /// The k-threshold: in each categorical column, a value that fewer than `k` of the rows in
    /// `counted` (the training split, whose counts are reported) have becomes
    /// [`OTHER_CATEGORY`] in every row, test rows included; when the rare values together are
    /// still fewer than `k`, they become missing. Values seen only outside `counted` are rare
    /// too. Returns how many values were folded. After this, every category the site reports
    /// counts at least `k` rows.
    pub fn fold_rare_categories(&mut self, counted: &[usize], k: u64) -> usize {
        let mut folded = 0;
        for j in 0..self.columns.len() {
            if !self.categorical[j] || k <= 1 {
                continue;
            }
            let mut counts: HashMap<&str, u64> = HashMap::new();
            for &i in counted {
                if let Some(v) = &self.rows[i].values[j] {
                    *counts.entry(v.as_str()).or_default() += 1;
                }
            }
            let kept: HashSet<String> = counts.iter().filter(|&(_, &n)| n >= k).map(|(v, _)| (*v).to_owned()).collect();
            let other: u64 = counts.iter().filter(|&(_, &n)| n < k).map(|(_, &n)| n).sum();
            let replacement = (other >= k).then(|| OTHER_CATEGORY.to_owned());
            for row in &mut self.rows {
                if let Some(v) = &row.values[j]
                    && !kept.contains(v)
                {
                    row.values[j] = replacement.clone();
                    folded += 1;
                }
            }
        }
        folded
    }

    /// Labels in row order.
    pub fn labels(&self) -> Vec<u32> {
        self.rows.iter().map(|r| r.label).collect()
    }
}

/// Maps a label field to a class index under the rule.
pub fn parse_label(v: &str, rule: &LabelRule) -> Result<u32, String> {
    if v.is_empty() {
        return Err("the label is missing".into());
    }
    match rule {
        LabelRule::PositiveAbove(t) => match v.parse::<f64>() {
            Ok(x) if x.is_finite() => Ok(u32::from(x > *t)),
            _ => Err("the label is not a number".into()),
        },
        LabelRule::PositiveValues(pos) => Ok(u32::from(pos.iter().any(|p| p == v))),
        LabelRule::Classes(classes) => {
            classes.iter().position(|c| c == v).map(|i| i as u32).ok_or_else(|| format!("the label is not one of the task's {} classes", classes.len()))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::task::Task;

    fn table(text: &str) -> RawTable {
        RawTable::from_reader(text.as_bytes(), Path::new("site.csv")).unwrap()
    }

    const HEADER: &str = "id,age,sex,dataset,cp,trestbps,chol,fbs,restecg,thalch,exang,oldpeak,slope,ca,thal,num\n";

    #[test]
    fn hospital_rows_are_cleaned_and_labelled() {
        let t = table(&format!(
            "{HEADER}1,63,Male,Cleveland,typical angina,145,233,TRUE,lv hypertrophy,150,FALSE,2.3,downsloping,0,fixed defect,0\n\
             2,67,Male,Cleveland,asymptomatic,160,0,FALSE,lv hypertrophy,108,TRUE,1.5,flat,,normal,2\n"
        ));
        let rows = SiteRows::from_table(&t, &Task::hospitals().data).unwrap();
        assert_eq!(rows.columns.len(), 13); // 16 minus id, dataset, num
        assert_eq!(rows.labels(), vec![0, 1]);
        let chol = rows.columns.iter().position(|c| c == "chol").unwrap();
        let ca = rows.columns.iter().position(|c| c == "ca").unwrap();
        assert_eq!(rows.rows[1].values[chol], None, "chol = 0 means not measured");
        assert_eq!(rows.rows[1].values[ca], None, "empty is missing");
        assert!(rows.categorical[rows.columns.iter().position(|c| c == "sex").unwrap()]);
    }

    #[test]
    fn a_bad_number_names_file_line_and_column() {
        let t = table(&format!(
            "{HEADER}1,63,Male,Cleveland,typical angina,145,233,TRUE,lv hypertrophy,150,FALSE,2.3,downsloping,0,fixed defect,0\n\
             2,sixty,Male,Cleveland,asymptomatic,160,286,FALSE,lv hypertrophy,108,TRUE,1.5,flat,3,normal,2\n"
        ));
        let err = SiteRows::from_table(&t, &Task::hospitals().data).unwrap_err().to_string();
        assert!(err.contains("site.csv:3") && err.contains("column `age`") && err.contains("not a number"), "{err}");
        assert!(!err.contains("sixty"), "errors must not repeat data values: {err}");

        let mut spec = Task::hospitals().data;
        spec.bad_rows = BadRows::Skip;
        let rows = SiteRows::from_table(&t, &spec).unwrap();
        assert_eq!((rows.rows.len(), rows.skipped.len()), (1, 1));
    }

    #[test]
    fn a_missing_label_is_a_bad_row() {
        let t = table(&format!("{HEADER}1,63,Male,Cleveland,typical angina,145,233,TRUE,lv hypertrophy,150,FALSE,2.3,downsloping,0,fixed defect,\n"));
        let err = SiteRows::from_table(&t, &Task::hospitals().data).unwrap_err().to_string();
        assert!(err.contains("site.csv:2") && err.contains("column `num`"), "{err}");
    }

    #[test]
    fn categories_rarer_than_k_become_other_or_missing() {
        // 6 × a, 3 × b, 2 × c, 1 × d in the counted rows; e only in an uncounted row.
        let values = ["a", "a", "a", "a", "a", "a", "b", "b", "b", "c", "c", "d", "e"];
        let text: String = values.iter().enumerate().map(|(i, v)| format!("{i},{v},good\n")).collect();
        let mut spec = Task::banks().data;
        spec.label.column = "y".into();
        spec.categorical = Categorical::Listed(vec!["color".into()]);
        let counted: Vec<usize> = (0..12).collect();
        let column = |rows: &SiteRows| rows.rows.iter().map(|r| r.values[1].clone()).collect::<Vec<_>>();

        let mut rows = SiteRows::from_table(&table(&format!("x,color,y\n{text}")), &spec).unwrap();
        assert_eq!(rows.fold_rare_categories(&counted, 5), 7);
        let other = Some(OTHER_CATEGORY.to_owned());
        let expected: Vec<Option<String>> = (0..13).map(|i| if i < 6 { Some("a".to_owned()) } else { other.clone() }).collect();
        assert_eq!(column(&rows), expected, "b, c, d (6 rows together) are one category; e is rare too");
        let stats = crate::data::SiteStats::of_rows(&rows, &counted);
        assert!(stats.columns[1].categories.values().all(|&n| n >= 5), "{:?}", stats.columns[1].categories);

        // With k = 7 even `a` is rare, and all rare values together (12) form `other`; with
        // k = 13 they are too few and become missing: nothing is reported.
        let mut rows = SiteRows::from_table(&table(&format!("x,color,y\n{text}")), &spec).unwrap();
        rows.fold_rare_categories(&counted, 13);
        assert!(column(&rows).iter().all(Option::is_none));
        assert!(crate::data::SiteStats::of_rows(&rows, &counted).columns[1].categories.is_empty());

        // k = 1 reports everything, as before.
        let mut rows = SiteRows::from_table(&table(&format!("x,color,y\n{text}")), &spec).unwrap();
        assert_eq!(rows.fold_rare_categories(&counted, 1), 0);
    }

    #[test]
    fn categorical_columns_can_be_inferred() {
        let t = table("x,color,y\n1.5,red,bad\n2,,good\n3,blue,good\n");
        let mut spec = Task::banks().data;
        spec.label.column = "y".into();
        let rows = SiteRows::from_table(&t, &spec).unwrap();
        assert_eq!(rows.categorical, vec![false, true]);
        assert_eq!(rows.labels(), vec![1, 0, 0]);
    }
}
