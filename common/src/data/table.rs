//! Reading a CSV file with a header into memory, keeping each row's line number for errors.

use std::path::{Path, PathBuf};

use crate::error::{DataError, Location};

/// A CSV file as strings: header plus rows, each with the line it came from.
#[derive(Debug, Clone)]
pub struct RawTable {
    /// Where the rows came from (named in every error).
    pub source: PathBuf,
    pub header: Vec<String>,
    pub rows: Vec<RawRow>,
    /// Columns of the file that were not read past the header (a site's policy withholds
    /// them): only their names are known, to tell "withheld" from "not in the file".
    pub withheld: Vec<String>,
}

/// One data row and its 1-based line in the source file.
#[derive(Debug, Clone, PartialEq)]
pub struct RawRow {
    pub line: u64,
    pub fields: Vec<String>,
}

impl RawTable {
    /// Reads a CSV file; a ragged row or broken quoting is an error naming file and line.
    pub fn read(path: &Path) -> Result<Self, DataError> {
        let file = std::fs::File::open(path).map_err(|source| DataError::Io { path: path.to_owned(), source })?;
        Self::from_reader(file, path)
    }

    /// Reads a CSV file keeping only the columns `keep` accepts: the others' fields are
    /// parsed past (the CSV grammar needs it) but never stored.
    pub fn read_keeping(path: &Path, keep: &dyn Fn(&str) -> bool) -> Result<Self, DataError> {
        let file = std::fs::File::open(path).map_err(|source| DataError::Io { path: path.to_owned(), source })?;
        Self::from_reader_keeping(file, path, keep)
    }

    /// Reads CSV text from any reader; `source` names it in errors.
    pub fn from_reader<R: std::io::Read>(reader: R, source: &Path) -> Result<Self, DataError> {
        Self::from_reader_keeping(reader, source, &|_| true)
    }

    /// Reads CSV text, keeping only the columns `keep` accepts.
    pub fn from_reader_keeping<R: std::io::Read>(reader: R, source: &Path, keep: &dyn Fn(&str) -> bool) -> Result<Self, DataError> {
        let mut rdr = csv::ReaderBuilder::new().has_headers(true).flexible(false).from_reader(reader);
        let header: Vec<String> = rdr.headers().map_err(|e| csv_error(e, source))?.iter().map(|h| h.trim().to_owned()).collect();
        if header.is_empty() || header.iter().all(String::is_empty) {
            return Err(DataError::File { file: source.to_owned(), message: "no header row".into() });
        }
        for (i, name) in header.iter().enumerate() {
            if name.is_empty() {
                return Err(DataError::File { file: source.to_owned(), message: format!("header column {} has no name", i + 1) });
            }
            if header[..i].contains(name) {
                return Err(DataError::File { file: source.to_owned(), message: format!("header names column `{name}` twice") });
            }
        }
        let kept: Vec<bool> = header.iter().map(|h| keep(h)).collect();
        let mut rows = Vec::new();
        for record in rdr.records() {
            let record = record.map_err(|e| csv_error(e, source))?;
            let line = record.position().map_or(0, |p| p.line());
            let fields = record.iter().zip(&kept).filter(|(_, k)| **k).map(|(f, _)| f.trim().to_owned()).collect();
            rows.push(RawRow { line, fields });
        }
        let (kept_names, withheld) = header.into_iter().zip(kept).partition::<Vec<_>, _>(|(_, k)| *k);
        let header = kept_names.into_iter().map(|(h, _)| h).collect();
        Ok(Self { source: source.to_owned(), header, rows, withheld: withheld.into_iter().map(|(h, _)| h).collect() })
    }

    /// The same table without the columns `keep` refuses (for tables already in memory).
    pub fn keeping(mut self, keep: &dyn Fn(&str) -> bool) -> Self {
        let kept: Vec<bool> = self.header.iter().map(|h| keep(h)).collect();
        if kept.iter().all(|k| *k) {
            return self;
        }
        for row in &mut self.rows {
            let mut flags = kept.iter();
            row.fields.retain(|_| *flags.next().unwrap_or(&false));
        }
        let mut flags = kept.iter();
        let (header, withheld): (Vec<String>, Vec<String>) = self.header.drain(..).partition(|_| *flags.next().unwrap_or(&false));
        self.header = header;
        self.withheld.extend(withheld);
        self
    }

    /// Index of a named column.
    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.header.iter().position(|h| h == name)
    }

    /// A table with the same header and a subset of rows.
    pub fn with_rows(&self, source: PathBuf, rows: Vec<RawRow>) -> RawTable {
        RawTable { source, header: self.header.clone(), rows, withheld: self.withheld.clone() }
    }

    /// Writes the table back as CSV (used to hand simulated sites their own files).
    pub fn write(&self, path: &Path) -> Result<(), DataError> {
        let io = |e: csv::Error| DataError::File { file: path.to_owned(), message: e.to_string() };
        let mut w = csv::Writer::from_path(path).map_err(io)?;
        w.write_record(&self.header).map_err(io)?;
        for r in &self.rows {
            w.write_record(&r.fields).map_err(io)?;
        }
        w.flush().map_err(|source| DataError::Io { path: path.to_owned(), source })
    }
}

fn csv_error(e: csv::Error, source: &Path) -> DataError {
    let line = e.position().map_or(0, |p| p.line());
    let message = match e.kind() {
        csv::ErrorKind::UnequalLengths { expected_len, len, .. } => {
            format!("row has {len} fields, the header has {expected_len}")
        }
        csv::ErrorKind::Utf8 { err, .. } => format!("invalid UTF-8 in field {}", err.field() + 1),
        _ => e.to_string(),
    };
    if line == 0 {
        DataError::File { file: source.to_owned(), message }
    } else {
        DataError::Row { at: Location { file: source.to_owned(), line, column: None }, message }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_keep_their_line_numbers() {
        let t = RawTable::from_reader("a,b\n1,2\n\"x\ny\",3\n4,5\n".as_bytes(), Path::new("t.csv")).unwrap();
        assert_eq!(t.header, vec!["a", "b"]);
        assert_eq!(t.rows.iter().map(|r| r.line).collect::<Vec<_>>(), vec![2, 3, 5]);
    }

    #[test]
    fn ragged_row_names_file_and_line() {
        let err = RawTable::from_reader("a,b\n1,2\n3\n".as_bytes(), Path::new("t.csv")).unwrap_err().to_string();
        assert!(err.contains("t.csv:3") && err.contains("1 fields"), "{err}");
    }

    #[test]
    fn withheld_columns_are_not_kept() {
        let text = "id,secret,age,y\n1,hiv+,40,0\n2,\"a,b\",50,1\n";
        let keep = |c: &str| c != "secret" && c != "id";
        let t = RawTable::from_reader_keeping(text.as_bytes(), Path::new("t.csv"), &keep).unwrap();
        assert_eq!(t.header, vec!["age", "y"]);
        assert_eq!(t.withheld, vec!["id", "secret"]);
        assert_eq!(t.rows[1].fields, vec!["50", "1"]);
        assert!(!format!("{t:?}").contains("hiv"), "a withheld value stays nowhere in memory: {t:?}");
        let same = RawTable::from_reader(text.as_bytes(), Path::new("t.csv")).unwrap().keeping(&keep);
        assert_eq!((same.header, same.withheld, same.rows), (t.header, t.withheld, t.rows));
    }

    #[test]
    fn duplicate_header_is_refused() {
        let err = RawTable::from_reader("a,a\n1,2\n".as_bytes(), Path::new("t.csv")).unwrap_err().to_string();
        assert!(err.contains("`a` twice"), "{err}");
    }
}
