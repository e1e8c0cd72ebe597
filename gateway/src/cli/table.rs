//! Plain-text tables: every column padded to its widest cell, two spaces
//! between columns, no trailing blanks (`wanmig status`, `wanmig vm list`).

/// Lays out `rows` (the first is the header); rows shorter than the
/// longest leave their last columns empty.
pub fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .map(|r| r.get(c).map_or(0, |cell| cell.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(cells: &[&str]) -> Vec<String> {
        cells.iter().map(|c| c.to_string()).collect()
    }

    #[test]
    fn columns_line_up_without_trailing_blanks() {
        let t = table(&[
            row(&["VM", "STATE"]),
            row(&["web-1", "running"]),
            row(&["db", "µ"]),
        ]);
        assert_eq!(t, "VM     STATE\nweb-1  running\ndb     µ\n");
        assert_eq!(table(&[]), "");
        assert_eq!(
            table(&[row(&["A", "B"]), row(&["long"])]),
            "A     B\nlong\n"
        );
    }
}
