//! Multi-row statements. Every statement is a round trip to the database (with SQLite, a
//! hand-off to its worker thread and back: two context switches on this two-core kind of
//! machine), so a batch of rows is written in a few statements, not one per row.
//!
//! A batch is cut into chunks whose sizes are powers of two, so each table needs only a
//! handful of distinct statement texts and the prepared-statement cache keeps them all.
//! A statement binds at most [`MAX_PARAMETERS`]. Where the dialect allows, the
//! placeholders are anonymous (`?`): sqlx looks each numbered one (`$N`) up by name, and
//! SQLite finds a name by a linear scan, so numbered parameters cost the square of their
//! count to bind (4% of a mint's profile at 1,152 of them, 2% of a checked call's at 256).

/// Most rows in one statement.
pub(super) const CHUNK: usize = 64;

/// Most parameters bound in one statement (far below either database's limit: SQLite
/// 32,766, PostgreSQL 65,535).
pub(super) const MAX_PARAMETERS: usize = 256;

/// `rows` of `width` parameters each, cut into chunks of the most rows one statement
/// takes (at most [`CHUNK`] and [`MAX_PARAMETERS`]), then of the largest power of two
/// that is left.
pub(super) fn chunks<T>(mut rows: &[T], width: usize) -> impl Iterator<Item = &[T]> {
    let most = 1usize << (MAX_PARAMETERS / width.max(1)).clamp(1, CHUNK).ilog2();
    std::iter::from_fn(move || {
        if rows.is_empty() {
            return None;
        }
        let size = if rows.len() >= most {
            most
        } else {
            1 << rows.len().ilog2()
        };
        let (chunk, rest) = rows.split_at(size);
        rows = rest;
        Some(chunk)
    })
}

/// `rows` parenthesised groups of `width` placeholders, numbered from `$1` on:
/// `($1, $2), ($3, $4)` for a width of 2 and two rows; `(?, ?), (?, ?)` if `anonymous`.
pub(super) fn placeholders(width: usize, rows: usize, anonymous: bool) -> String {
    let mut text = String::with_capacity(rows * width * 5);
    for row in 0..rows {
        if row > 0 {
            text.push_str(", ");
        }
        text.push('(');
        for column in 0..width {
            if column > 0 {
                text.push_str(", ");
            }
            if anonymous {
                text.push('?');
            } else {
                text.push('$');
                text.push_str(&(row * width + column + 1).to_string());
            }
        }
        text.push(')');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_every_row_once_in_order_in_few_sizes() {
        for width in [1, 3, 8, 18, 300] {
            for n in 0..300usize {
                let rows: Vec<usize> = (0..n).collect();
                let cut: Vec<&[usize]> = chunks(&rows, width).collect();
                let joined: Vec<usize> = cut.iter().flat_map(|c| c.iter().copied()).collect();
                assert_eq!(joined, rows, "{n} rows of {width}");
                let most = cut.iter().map(|c| c.len()).max().unwrap_or(1);
                for chunk in &cut {
                    assert!(chunk.len().is_power_of_two() && chunk.len() <= CHUNK);
                    assert!(chunk.len() == 1 || chunk.len() * width <= MAX_PARAMETERS);
                }
                // Full chunks, then at most one chunk of each smaller size.
                let small: Vec<usize> = cut.iter().map(|c| c.len()).filter(|&l| l < most).collect();
                let mut distinct = small.clone();
                distinct.dedup();
                assert_eq!(small, distinct, "{n} rows of {width}");
            }
        }
        assert_eq!(chunks(&[0; 100], 18).next().map(<[_]>::len), Some(8));
        assert_eq!(chunks(&[0; 100], 8).next().map(<[_]>::len), Some(32));
        assert_eq!(chunks(&[0; 100], 1).next().map(<[_]>::len), Some(64));
    }

    #[test]
    fn placeholders_number_every_column_of_every_row() {
        assert_eq!(placeholders(2, 2, false), "($1, $2), ($3, $4)");
        assert_eq!(placeholders(3, 1, false), "($1, $2, $3)");
        assert_eq!(placeholders(1, 3, false), "($1), ($2), ($3)");
        assert_eq!(placeholders(2, 2, true), "(?, ?), (?, ?)");
    }
}
