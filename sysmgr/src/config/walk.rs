//! A small span-keeping reader over a parsed TOML document.
//!
//! serde stops at the first error; operators want every mistake in every file at once, each with
//! file:line:column. So validation walks `toml_edit`'s document (which keeps byte spans), marks
//! each key it understands, reports type and range errors where the value is, and reports every
//! key nobody asked for as unknown (`deny_unknown_fields`, with positions).

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml_edit::{Item, TableLike, Value};

/// One validation error, located in its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: usize,
    pub col: usize,
    pub msg: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.col,
            self.msg
        )
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(src.len());
    let before = &src[..src.floor_char_boundary(offset)];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// The file being validated and the errors found so far.
pub struct Ctx<'a> {
    pub file: &'a Path,
    pub src: &'a str,
    pub errors: &'a mut Vec<ConfigError>,
}

impl Ctx<'_> {
    pub fn err(&mut self, span: Option<Range<usize>>, msg: impl Into<String>) {
        let (line, col) = line_col(self.src, span.map_or(0, |s| s.start));
        self.errors.push(ConfigError {
            file: self.file.to_path_buf(),
            line,
            col,
            msg: msg.into(),
        });
    }
}

/// A table being read: remembers which keys were consumed.
pub struct Tbl<'d> {
    t: &'d dyn TableLike,
    /// Dotted path for messages, e.g. `ha.single-sup.primary`.
    pub path: String,
    seen: Vec<String>,
}

impl<'d> Tbl<'d> {
    pub fn new(t: &'d dyn TableLike, path: impl Into<String>) -> Self {
        Tbl {
            t,
            path: path.into(),
            seen: Vec::new(),
        }
    }

    /// The item under `key`, marking it understood.
    pub fn get(&mut self, key: &str) -> Option<&'d Item> {
        self.seen.push(key.to_string());
        self.t.get(key).filter(|i| !i.is_none())
    }

    /// Every key of the table, in file order (for tables of user-chosen keys).
    pub fn keys(&self) -> Vec<String> {
        self.t.iter().map(|(k, _)| k.to_string()).collect()
    }

    pub fn key_span(&self, key: &str) -> Option<Range<usize>> {
        self.t.key(key).and_then(|k| k.span())
    }

    /// The table under `key` (marked understood), if it is there; a non-table is an error.
    pub fn sub(&mut self, ctx: &mut Ctx<'_>, key: &str) -> Option<Tbl<'d>> {
        let item = self.get(key)?;
        let path = if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        };
        table(ctx, key, item, path)
    }

    /// Report every key that no `get` asked for.
    pub fn finish(self, ctx: &mut Ctx<'_>) {
        for (k, _) in self.t.iter() {
            if !self.seen.iter().any(|s| s == k) {
                let where_ = if self.path.is_empty() {
                    String::from("at top level")
                } else {
                    format!("in [{}]", self.path)
                };
                ctx.err(
                    self.t.key(k).and_then(|k| k.span()),
                    format!(
                        "unknown field `{k}` {where_}; expected one of: {}",
                        self.seen.join(", ")
                    ),
                );
            }
        }
    }
}

fn type_name(i: &Item) -> &'static str {
    match i {
        Item::None => "nothing",
        Item::Table(_) => "a table",
        Item::ArrayOfTables(_) => "an array of tables",
        Item::Value(v) => match v {
            Value::String(_) => "a string",
            Value::Integer(_) => "an integer",
            Value::Float(_) => "a float",
            Value::Boolean(_) => "a boolean",
            Value::Datetime(_) => "a datetime",
            Value::Array(_) => "an array",
            Value::InlineTable(_) => "an inline table",
        },
    }
}

fn wrong(ctx: &mut Ctx<'_>, key: &str, item: &Item, want: &str) {
    ctx.err(
        item.span(),
        format!("`{key}` must be {want}, found {}", type_name(item)),
    );
}

pub fn string(ctx: &mut Ctx<'_>, key: &str, item: &Item) -> Option<String> {
    match item.as_str() {
        Some(s) => Some(s.to_string()),
        None => {
            wrong(ctx, key, item, "a string");
            None
        }
    }
}

pub fn non_empty_string(ctx: &mut Ctx<'_>, key: &str, item: &Item) -> Option<String> {
    let s = string(ctx, key, item)?;
    if s.is_empty() {
        ctx.err(item.span(), format!("`{key}` must not be empty"));
        return None;
    }
    Some(s)
}

pub fn int(ctx: &mut Ctx<'_>, key: &str, item: &Item, min: i64, max: i64) -> Option<i64> {
    let Some(v) = item.as_integer() else {
        wrong(ctx, key, item, "an integer");
        return None;
    };
    if v < min || v > max {
        ctx.err(
            item.span(),
            format!("`{key}` = {v} is out of range {min}..={max}"),
        );
        return None;
    }
    Some(v)
}

pub fn boolean(ctx: &mut Ctx<'_>, key: &str, item: &Item) -> Option<bool> {
    let b = item.as_bool();
    if b.is_none() {
        wrong(ctx, key, item, "true or false");
    }
    b
}

/// A duration written as `"4m"`, `"300ms"`, `"1h 30m"`.
pub fn duration(ctx: &mut Ctx<'_>, key: &str, item: &Item) -> Option<Duration> {
    let s = item.as_str().or_else(|| {
        wrong(
            ctx,
            key,
            item,
            "a duration string such as \"4m\" or \"300ms\"",
        );
        None
    })?;
    match humantime::parse_duration(s) {
        Ok(d) => Some(d),
        Err(e) => {
            ctx.err(
                item.span(),
                format!("`{key}` = {s:?} is not a duration ({e}); write e.g. \"4m\" or \"300ms\""),
            );
            None
        }
    }
}

/// An array of strings, each with its span.
pub fn str_array(
    ctx: &mut Ctx<'_>,
    key: &str,
    item: &Item,
) -> Option<Vec<(String, Option<Range<usize>>)>> {
    let Some(arr) = item.as_array() else {
        wrong(ctx, key, item, "an array of strings");
        return None;
    };
    let mut out = Vec::new();
    let mut ok = true;
    for v in arr.iter() {
        match v.as_str() {
            Some(s) => out.push((s.to_string(), v.span())),
            None => {
                ctx.err(
                    v.span(),
                    format!("every element of `{key}` must be a string"),
                );
                ok = false;
            }
        }
    }
    ok.then_some(out)
}

/// A (regular or inline) table.
pub fn table<'d>(ctx: &mut Ctx<'_>, key: &str, item: &'d Item, path: String) -> Option<Tbl<'d>> {
    match item.as_table_like() {
        Some(t) => Some(Tbl::new(t, path)),
        None => {
            wrong(ctx, key, item, "a table");
            None
        }
    }
}

/// One of a fixed set of words.
pub fn one_of<T: Copy>(
    ctx: &mut Ctx<'_>,
    key: &str,
    item: &Item,
    choices: &[(&str, T)],
) -> Option<T> {
    let s = string(ctx, key, item)?;
    if let Some((_, v)) = choices.iter().find(|(w, _)| *w == s) {
        return Some(*v);
    }
    let words: Vec<&str> = choices.iter().map(|(w, _)| *w).collect();
    ctx.err(
        item.span(),
        format!("`{key}` = {s:?} is not one of: {}", words.join(", ")),
    );
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_lines_and_chars() {
        let s = "a = 1\nbé = 2\n";
        assert_eq!(line_col(s, 0), (1, 1));
        assert_eq!(line_col(s, 6), (2, 1));
        assert_eq!(line_col(s, s.find('=').unwrap_or(0)), (1, 3));
        let second_eq = s.rfind('=').unwrap_or(0);
        assert_eq!(line_col(s, second_eq), (2, 4));
    }
}
