//! Plain-text tables for a terminal: columns padded to their widest cell, numbers right-aligned like
//! `rabbitmqctl list_queues`, cells kept on one line.

/// How a column is aligned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    /// Text.
    Left,
    /// Numbers.
    Right,
}

/// Renders a header row and `rows` (each as long as `columns`), with a newline after every row.
pub fn render(columns: &[(&str, Align)], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = columns
        .iter()
        .map(|(title, _)| title.chars().count())
        .collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(columns)
            .zip(&widths)
            .map(|((cell, (_, align)), width)| match align {
                Align::Left => format!("{cell:<width$}"),
                Align::Right => format!("{cell:>width$}"),
            })
            .collect();
        format!("{}\n", padded.join("  ").trim_end())
    };
    let mut out = line(columns.iter().map(|(title, _)| *title).collect());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

/// One line of at most `max` characters: line breaks become spaces, and a cut is marked with `…`.
pub fn one_line(text: &str, max: usize) -> String {
    let flat: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if flat.chars().count() <= max {
        return flat;
    }
    let kept: String = flat.chars().take(max.saturating_sub(1)).collect();
    format!("{kept}…")
}

/// A count for a table cell; `-` when the number is not known.
pub fn count(value: Option<u64>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up_and_numbers_align_right() {
        let text = render(
            &[("QUEUE", Align::Left), ("READY", Align::Right)],
            &[
                vec!["cm.phase1".into(), "7".into()],
                vec!["cm.phase2.dead".into(), "1234".into()],
            ],
        );
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "QUEUE           READY");
        assert_eq!(lines[1], "cm.phase1           7");
        assert_eq!(lines[2], "cm.phase2.dead   1234");
    }

    #[test]
    fn cells_stay_on_one_line_and_are_cut_visibly() {
        assert_eq!(one_line("a\nb", 10), "a b");
        assert_eq!(one_line("ééééé", 3), "éé…");
        assert_eq!(count(None), "-");
        assert_eq!(count(Some(3)), "3");
    }
}
