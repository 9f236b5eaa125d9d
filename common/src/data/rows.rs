//! Cleaning: a raw table becomes labelled rows of feature values under the task's data spec.
//!
//! Empty fields and the spec's spellings of "missing" (pandas' defaults and `?` unless the
//! task says otherwise) become missing values. A row whose
//! label or numeric field cannot be parsed is reported with file, line and column, and the
//! spec decides whether that stops the site or the row is skipped and counted.

use std::collections::{BTreeSet, HashSet};

use crate::error::{DataError, Location};
use crate::task::{BadRows, Categorical, DataSpec, LabelRule};

use super::table::RawTable;

/// One cleaned row: a class label (or a regression target) and the raw text of each
/// feature (`None` = missing).
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub line: u64,
    /// The class index; 0 in a regression task.
    pub label: u32,
    /// The label's value in a regression task; 0 in a classification task.
    pub target: f64,
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
    /// Feature columns whose values are all distinct whole numbers or words (at least
    /// [`ValueProfile::IDENTIFIER_ROWS`] of them), as in a row or patient number.
    pub identifiers: Vec<String>,
}

/// What inference looks at in one column's non-missing values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValueProfile {
    pub values: u64,
    /// Values that are not finite numbers.
    pub text: u64,
    /// Values that are whole numbers.
    pub integers: u64,
    pub distinct: u64,
}

impl ValueProfile {
    /// Fewer values than this are never called an identifier.
    pub const IDENTIFIER_ROWS: u64 = 20;

    pub fn of<'a>(values: impl Iterator<Item = &'a str>) -> Self {
        let mut seen = HashSet::new();
        let mut p = ValueProfile { values: 0, text: 0, integers: 0, distinct: 0 };
        for v in values {
            p.values += 1;
            match v.parse::<f64>() {
                Ok(x) if x.is_finite() => p.integers += u64::from(x.fract() == 0.0),
                _ => p.text += 1,
            }
            seen.insert(v);
        }
        p.distinct = seen.len() as u64;
        p
    }

    /// Inference's rule: a column is categorical at a site when most of its values are not
    /// numbers (a few stray words in a numeric column are bad values, not categories).
    pub fn mostly_text(&self) -> bool {
        self.text * 2 > self.values
    }

    /// More distinct values than a category column has.
    pub fn too_many_categories(&self, max: u64) -> bool {
        self.distinct > max || (self.distinct > Self::IDENTIFIER_ROWS && self.distinct * 2 > self.values)
    }

    /// Every value distinct, and all whole numbers or all words.
    pub fn looks_like_identifier(&self) -> bool {
        self.values >= Self::IDENTIFIER_ROWS && self.distinct == self.values && (self.integers == self.values || self.text == self.values)
    }
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
        let is_missing = |j: usize, v: &str| spec.is_missing(&columns[j], v);

        let mut identifiers = Vec::new();
        let categorical: Vec<bool> = match &spec.categorical {
            Categorical::Listed(list) => columns.iter().map(|c| list.contains(c)).collect(),
            Categorical::Rule(_) => {
                let mut flags = Vec::with_capacity(features.len());
                for (j, &i) in features.iter().enumerate() {
                    let profile = ValueProfile::of(table.rows.iter().map(|r| r.fields[i].as_str()).filter(|v| !is_missing(j, v)));
                    if profile.looks_like_identifier() {
                        identifiers.push(columns[j].clone());
                    }
                    let inferred = !spec.numeric.contains(&columns[j]) && profile.mostly_text();
                    if inferred && profile.too_many_categories(spec.max_inferred_categories) {
                        return Err(DataError::File {
                            file: table.source.clone(),
                            message: format!(
                                "column `{}`: inferred categorical ({} of its {} values are not numbers) with {} distinct values; \
                                 a category needs many rows per value (at most {} values, and fewer than one per two rows). \
                                 Drop it (`drop = [\"{0}\"]`), declare it `numeric = [\"{0}\"]`, or list its spellings of \"missing\" in `missing`",
                                columns[j], profile.text, profile.values, profile.distinct, spec.max_inferred_categories
                            ),
                        });
                    }
                    flags.push(inferred);
                }
                flags
            }
        };
        for column in &identifiers {
            tracing::warn!(file = %table.source.display(), column, "every value of this column is distinct, as in an identifier: drop it unless it is a measurement");
        }

        let mut rows = Vec::with_capacity(table.rows.len());
        let mut skipped = Vec::new();
        for raw in &table.rows {
            let at = |column: &str| Location { file: table.source.clone(), line: raw.line, column: Some(column.to_owned()) };
            // A numeric label spelled as missing (`NA`) is missing, not a bad number.
            let label_field = match &rule {
                LabelRule::PositiveAbove(_) | LabelRule::Value if spec.is_missing(&spec.label.column, &raw.fields[label_idx]) => "",
                _ => raw.fields[label_idx].as_str(),
            };
            let parsed = parse_label(label_field, &rule).map_err(|m| DataError::Row { at: at(&spec.label.column), message: m }).and_then(|(label, target)| {
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
                Ok(Row { line: raw.line, label, target, values })
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
        Ok(Self { columns, categorical, rows, skipped, identifiers })
    }

    /// Labels in row order.
    pub fn labels(&self) -> Vec<u32> {
        self.rows.iter().map(|r| r.label).collect()
    }
}

/// Maps a label field to a class index under the rule, with the target value of a
/// regression task (0 otherwise).
pub fn parse_label(v: &str, rule: &LabelRule) -> Result<(u32, f64), String> {
    if v.is_empty() {
        return Err("the label is missing".into());
    }
    let number = || match v.parse::<f64>() {
        Ok(x) if x.is_finite() => Ok(x),
        _ => Err("the label is not a number".to_owned()),
    };
    match rule {
        LabelRule::PositiveAbove(t) => Ok((u32::from(number()? > *t), 0.0)),
        LabelRule::PositiveValues(pos) => Ok((u32::from(pos.iter().any(|p| p == v)), 0.0)),
        LabelRule::Classes(classes) => {
            classes.iter().position(|c| c == v).map(|i| (i as u32, 0.0)).ok_or_else(|| format!("the label is not one of the task's {} classes", classes.len()))
        }
        LabelRule::Value => Ok((0, number()?)),
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

    /// A heart-study export as R writes it: `NA` for missing, some `?` (UCI), some `NaN`.
    fn r_export(rows: usize) -> String {
        let mut text = String::from("id,chol,glucose,smoker,y\n");
        for i in 0..rows {
            let chol = match i % 9 {
                0 => "NA".to_owned(),
                4 => "?".to_owned(),
                _ => (170 + (i * 13) % 40).to_string(),
            };
            let glucose = if i % 11 == 0 { "NaN".to_owned() } else { format!("{}.{}", 70 + i % 40, i % 10) };
            let smoker = ["yes", "no", "NA", "no"][i % 4];
            text.push_str(&format!("{},{chol},{glucose},{smoker},{}\n", 5000 + i, ["bad", "good"][i % 2]));
        }
        text
    }

    fn infer_spec() -> DataSpec {
        let mut spec = Task::banks().data;
        spec.label.column = "y".into();
        spec
    }

    #[test]
    fn missing_spellings_of_r_pandas_and_uci_leave_numbers_numeric() {
        let rows = SiteRows::from_table(&table(&r_export(60)), &infer_spec()).unwrap();
        assert_eq!(rows.columns, vec!["id", "chol", "glucose", "smoker"]);
        assert_eq!(rows.categorical, vec![false, false, false, true], "NA, ? and NaN are missing, not categories");
        let chol = &rows.rows.iter().map(|r| r.values[1].clone()).collect::<Vec<_>>();
        assert_eq!(chol.iter().filter(|v| v.is_none()).count(), 14);
        assert_eq!(rows.identifiers, vec!["id"], "a distinct whole number in every row is flagged");
        // Without the defaults, `NA` makes chol mostly numbers with stray words: a bad row.
        let mut spec = infer_spec();
        spec.missing.clear();
        let err = SiteRows::from_table(&table(&r_export(60)), &spec).unwrap_err().to_string();
        assert!(err.contains("site.csv:2") && err.contains("column `chol`") && err.contains("not a number"), "{err}");
    }

    #[test]
    fn a_numeric_column_with_some_text_names_the_row_or_skips_it() {
        let mut text = String::from("age,y\n");
        for i in 0..30 {
            text.push_str(&format!("{},good\n", if i == 17 { "unknown".to_owned() } else { (30 + i).to_string() }));
        }
        let err = SiteRows::from_table(&table(&text), &infer_spec()).unwrap_err().to_string();
        assert!(err.contains("site.csv:19") && err.contains("column `age`"), "{err}");
        assert!(!err.contains("unknown"), "the value itself stays out of logs: {err}");
        let mut spec = infer_spec();
        spec.bad_rows = BadRows::Skip;
        let rows = SiteRows::from_table(&table(&text), &spec).unwrap();
        assert_eq!((rows.rows.len(), rows.skipped.len(), rows.categorical[0]), (29, 1, false));
    }

    #[test]
    fn an_inferred_category_with_very_many_values_is_refused_with_its_numbers() {
        let mut text = String::from("n,comment,y\n");
        for i in 0..200 {
            text.push_str(&format!("{},note {},good\n", i % 7, i % 150));
        }
        let err = SiteRows::from_table(&table(&text), &infer_spec()).unwrap_err().to_string();
        assert!(err.contains("site.csv") && err.contains("column `comment`") && err.contains("150 distinct values"), "{err}");
        assert!(err.contains("drop = [\"comment\"]") && err.contains("numeric = [\"comment\"]"), "{err}");
        // Declared numeric, the same words are bad values instead; dropped, it is gone.
        let mut spec = infer_spec();
        spec.drop = vec!["comment".into()];
        assert_eq!(SiteRows::from_table(&table(&text), &spec).unwrap().columns, vec!["n"]);
        let mut spec = infer_spec();
        spec.numeric = vec!["comment".into()];
        assert!(SiteRows::from_table(&table(&text), &spec).unwrap_err().to_string().contains("not a number"));
    }

    #[test]
    fn a_regression_label_is_a_number_and_a_missing_one_is_named() {
        let mut spec = infer_spec();
        spec.label =
            crate::task::LabelSpec { column: "y".into(), kind: crate::task::LabelKind::Regression, positive_above: None, positive_values: None, classes: None };
        let rows = SiteRows::from_table(&table("x,y\n1,2.5\n2,-7\n"), &spec).unwrap();
        assert_eq!(rows.rows.iter().map(|r| (r.label, r.target)).collect::<Vec<_>>(), vec![(0, 2.5), (0, -7.0)]);
        let err = SiteRows::from_table(&table("x,y\n1,2.5\n2,NA\n"), &spec).unwrap_err().to_string();
        assert!(err.contains("site.csv:3") && err.contains("column `y`") && err.contains("missing"), "{err}");
        let err = SiteRows::from_table(&table("x,y\n1,high\n"), &spec).unwrap_err().to_string();
        assert!(err.contains("site.csv:2") && err.contains("not a number") && !err.contains("high"), "{err}");
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
