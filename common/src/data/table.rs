//! Reading a CSV file with a header into memory, keeping each row's line number for errors.
//!
//! Files come from R, Excel, databases and pandas: `\n`, `\r\n` or old Mac `\r` line endings,
//! a UTF-8 byte-order mark, `,` `;` or tab delimiters (detected from the header line unless
//! given), quoted fields, and, in `;`-delimited files (Excel in a comma-decimal locale), decimal
//! commas (`1,5`), read as `1.5`. A file in UTF-16 is refused with a hint instead of garbled.

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
        Self::read_keeping(path, &|_| true)
    }

    /// Reads a CSV file keeping only the columns `keep` accepts: the others' fields are
    /// parsed past (the CSV grammar needs it) but never stored.
    pub fn read_keeping(path: &Path, keep: &dyn Fn(&str) -> bool) -> Result<Self, DataError> {
        Self::read_with(path, None, keep)
    }

    /// Reads a CSV file with a given delimiter (`None`: detected from the header line).
    pub fn read_with(path: &Path, delimiter: Option<u8>, keep: &dyn Fn(&str) -> bool) -> Result<Self, DataError> {
        let file = std::fs::File::open(path).map_err(|source| DataError::Io { path: path.to_owned(), source })?;
        Self::from_reader_with(file, path, delimiter, keep)
    }

    /// Reads CSV text from any reader; `source` names it in errors.
    pub fn from_reader<R: std::io::Read>(reader: R, source: &Path) -> Result<Self, DataError> {
        Self::from_reader_keeping(reader, source, &|_| true)
    }

    /// Reads CSV text, keeping only the columns `keep` accepts.
    pub fn from_reader_keeping<R: std::io::Read>(reader: R, source: &Path, keep: &dyn Fn(&str) -> bool) -> Result<Self, DataError> {
        Self::from_reader_with(reader, source, None, keep)
    }

    /// Reads CSV text with a given delimiter (`None`: detected), keeping the columns `keep` accepts.
    pub fn from_reader_with<R: std::io::Read>(reader: R, source: &Path, delimiter: Option<u8>, keep: &dyn Fn(&str) -> bool) -> Result<Self, DataError> {
        use std::io::BufRead;
        // The file streams through: only the kept fields are ever stored (a withheld column's
        // values pass through the parser's buffer and no further).
        let mut reader = std::io::BufReader::with_capacity(SNIFF_BYTES, reader);
        let io = |e| DataError::Io { path: source.to_owned(), source: e };
        let head = reader.fill_buf().map_err(io)?;
        if head.starts_with(&[0xFF, 0xFE]) || head.starts_with(&[0xFE, 0xFF]) {
            return Err(DataError::File { file: source.to_owned(), message: "the file is UTF-16 text; save it as UTF-8 CSV".into() });
        }
        // A UTF-8 byte-order mark (Excel's "CSV UTF-8") goes before parsing, so that a quoted
        // first header is still read as quoted.
        if head.starts_with(&[0xEF, 0xBB, 0xBF]) {
            reader.consume(3);
        }
        let delimiter = match delimiter {
            Some(d) => d,
            None => detect_delimiter(reader.fill_buf().map_err(io)?),
        };
        let decimal_comma = delimiter == b';';
        // The csv parser accepts `\r\n` and old Mac `\r` line ends but counts lines by `\n`
        // alone, and places a record after `\r\n` a line early: with every line end made `\n`,
        // errors and rows name the lines an editor shows.
        let mut rdr = csv::ReaderBuilder::new().has_headers(true).flexible(false).delimiter(delimiter).from_reader(LineEnds { inner: reader, after_cr: false });
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
            let fields = record.iter().zip(&kept).filter(|(_, k)| **k).map(|(f, _)| clean_field(f, decimal_comma)).collect();
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

/// Bytes looked at to detect the delimiter.
const SNIFF_BYTES: usize = 64 * 1024;

/// The delimiter of a CSV file from its header line: the most frequent of `,` `;` and tab
/// outside quotes (`,` when none occurs: a one-column file).
pub fn detect_delimiter(head: &[u8]) -> u8 {
    let mut counts = [(b',', 0usize), (b';', 0), (b'\t', 0)];
    let mut quoted = false;
    for &b in head {
        match b {
            b'"' => quoted = !quoted,
            b'\n' | b'\r' if !quoted => break,
            _ if !quoted => {
                if let Some(c) = counts.iter_mut().find(|(d, _)| *d == b) {
                    c.1 += 1;
                }
            }
            _ => {}
        }
    }
    // The first of the most frequent wins a tie, so `,` does.
    counts.iter().fold((b',', 0), |best, &c| if c.1 > best.1 { c } else { best }).0
}

/// A reader that turns `\r\n` and a lone `\r` into `\n` as the bytes stream through.
struct LineEnds<R> {
    inner: R,
    /// The last byte handed out was a `\r` turned into `\n`: a `\n` right after it is dropped.
    after_cr: bool,
}

impl<R: std::io::BufRead> std::io::Read for LineEnds<R> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let mut written = 0;
        while written < out.len() {
            let available = self.inner.fill_buf()?;
            if available.is_empty() {
                break;
            }
            let mut used = 0;
            for &b in available {
                if written == out.len() {
                    break;
                }
                used += 1;
                match b {
                    b'\n' if self.after_cr => self.after_cr = false,
                    b'\r' => {
                        out[written] = b'\n';
                        written += 1;
                        self.after_cr = true;
                    }
                    _ => {
                        out[written] = b;
                        written += 1;
                        self.after_cr = false;
                    }
                }
            }
            self.inner.consume(used);
        }
        Ok(written)
    }
}

/// A field as stored: trimmed, and a decimal comma (`-1,5`, `,5e3`) read as a point.
fn clean_field(f: &str, decimal_comma: bool) -> String {
    let f = f.trim();
    if decimal_comma && is_decimal_comma_number(f) {
        return f.replacen(',', ".", 1);
    }
    f.to_owned()
}

fn is_decimal_comma_number(f: &str) -> bool {
    let body = f.strip_prefix(['-', '+']).unwrap_or(f);
    let (mantissa, exponent) = match body.find(['e', 'E']) {
        Some(i) => (&body[..i], Some(&body[i + 1..])),
        None => (body, None),
    };
    let Some((int, frac)) = mantissa.split_once(',') else { return false };
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    let exponent_ok = exponent.is_none_or(|e| {
        let e = e.strip_prefix(['-', '+']).unwrap_or(e);
        !e.is_empty() && digits(e)
    });
    !int.is_empty() && !frac.is_empty() && digits(int) && digits(frac) && exponent_ok
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
    fn exports_of_r_excel_and_databases_are_read_alike() {
        let expected = RawTable::from_reader("age,sex,y\n40,f,1\n\"50\",\"m, retired\",0\n".as_bytes(), Path::new("t.csv")).unwrap();
        let variants: [&[u8]; 5] = [
            b"age,sex,y\r\n40,f,1\r\n\"50\",\"m, retired\",0\r\n",
            b"age,sex,y\r40,f,1\r\"50\",\"m, retired\",0\r",
            b"\xEF\xBB\xBF\"age\",sex,y\n40,f,1\n50,\"m, retired\",0\n",
            b"age;sex;y\n40;f;1\n50;m, retired;0\n",
            b"\"age\"\t\"sex\"\t\"y\"\n40\tf\t1\n50\tm, retired\t0\n",
        ];
        for bytes in variants {
            let t = RawTable::from_reader(bytes, Path::new("t.csv")).unwrap();
            assert_eq!((&t.header, &t.rows), (&expected.header, &expected.rows), "{}", String::from_utf8_lossy(bytes));
        }
    }

    #[test]
    fn line_ends_are_unified_across_read_boundaries() {
        use std::io::Read;
        let text = b"a\r\nb\rc\n\r\nd\r";
        for capacity in 1..6 {
            let mut out = Vec::new();
            LineEnds { inner: std::io::BufReader::with_capacity(capacity, &text[..]), after_cr: false }.read_to_end(&mut out).unwrap();
            assert_eq!(out, b"a\nb\nc\n\nd\n", "buffer of {capacity}");
        }
    }

    #[test]
    fn old_mac_line_endings_keep_line_numbers() {
        let err = RawTable::from_reader("a,b\r1,2\r3,4\r5\r".as_bytes(), Path::new("t.csv")).unwrap_err().to_string();
        assert!(err.contains("t.csv:4"), "{err}");
    }

    #[test]
    fn semicolon_files_read_decimal_commas() {
        let t = RawTable::from_reader("x;y;name\n1,5;-2,25e1;a,b\n3;,5;x\n".as_bytes(), Path::new("t.csv")).unwrap();
        assert_eq!(t.rows[0].fields, vec!["1.5", "-2.25e1", "a,b"]);
        assert_eq!(t.rows[1].fields, vec!["3", ",5", "x"], "a bare `,5` is not taken for a number");
        let t = RawTable::from_reader("x,y\n\"1,5\",2\n".as_bytes(), Path::new("t.csv")).unwrap();
        assert_eq!(t.rows[0].fields, vec!["1,5", "2"], "in a comma-delimited file a comma is never a decimal mark");
    }

    #[test]
    fn an_explicit_delimiter_wins_and_utf16_is_refused() {
        let t = RawTable::from_reader_with("a;b,c\n1;2,3\n".as_bytes(), Path::new("t.csv"), Some(b','), &|_| true).unwrap();
        assert_eq!(t.header, vec!["a;b", "c"]);
        let err = RawTable::from_reader(&b"\xFF\xFEa\x00,\x00b\x00"[..], Path::new("t.csv")).unwrap_err().to_string();
        assert!(err.contains("t.csv") && err.contains("UTF-16"), "{err}");
    }

    #[test]
    fn duplicate_header_is_refused() {
        let err = RawTable::from_reader("a,a\n1,2\n".as_bytes(), Path::new("t.csv")).unwrap_err().to_string();
        assert!(err.contains("`a` twice"), "{err}");
    }
}
