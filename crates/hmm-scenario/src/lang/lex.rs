//! Splitting a line into tokens with their columns, and reading numbers
//! and address expressions out of single tokens.

use super::ast::Expr;
use super::ParseError;

/// One whitespace-separated word of a line and its 1-based column.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Token<'a> {
    /// The text.
    pub text: &'a str,
    /// 1-based column of its first character.
    pub col: usize,
}

/// The tokens of one line, a `#` comment removed. `=` is its own token.
pub fn tokens(line: &str) -> Vec<Token<'_>> {
    let code = line.split('#').next().unwrap_or("");
    let mut out = Vec::new();
    let mut start = None;
    for (i, ch) in code.char_indices() {
        let boundary = ch.is_whitespace() || ch == '=';
        match (boundary, start) {
            (true, Some(s)) => {
                out.push(Token { text: &code[s..i], col: s + 1 });
                start = None;
            }
            (false, None) => start = Some(i),
            _ => {}
        }
        if ch == '=' {
            out.push(Token { text: &code[i..i + 1], col: i + 1 });
        }
    }
    if let Some(s) = start {
        out.push(Token { text: &code[s..], col: s + 1 });
    }
    out
}

/// True for a name: a letter or `_`, then letters, digits or `_`.
pub fn is_name(text: &str) -> bool {
    let mut chars = text.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Reads a number: decimal or `0x` hex, with an optional unit suffix
/// `p` (4 KiB pages), `k`, `M`, `G`.
pub fn number(tok: Token<'_>) -> Result<u64, ParseError> {
    let bad = |msg: &str| ParseError::at(tok.col, format!("{msg}: `{}`", tok.text));
    let (digits, unit) = match tok.text.char_indices().last() {
        Some((i, 'p')) => (&tok.text[..i], 4096u64),
        Some((i, 'k')) => (&tok.text[..i], 1 << 10),
        Some((i, 'M')) => (&tok.text[..i], 1 << 20),
        Some((i, 'G')) => (&tok.text[..i], 1 << 30),
        _ => (tok.text, 1),
    };
    let value =
        if let Some(hex) = digits.strip_prefix("0x") { u64::from_str_radix(hex, 16) } else { digits.parse::<u64>() }
            .map_err(|_| bad("not a number"))?;
    value.checked_mul(unit).ok_or_else(|| bad("number too large"))
}

/// Reads an address expression: `name`, `name+N`, `name-N` or `N`.
pub fn expr(tok: Token<'_>) -> Result<Expr, ParseError> {
    let text = tok.text;
    if text.starts_with(|c: char| c.is_ascii_digit()) {
        return Ok(Expr::num(number(tok)?));
    }
    let split = text.find(['+', '-']).unwrap_or(text.len());
    let (name, rest) = text.split_at(split);
    if !is_name(name) {
        return Err(ParseError::at(tok.col, format!("expected an address or a number, found `{text}`")));
    }
    if rest.is_empty() {
        return Ok(Expr::at(name, 0));
    }
    let num_tok = Token { text: &rest[1..], col: tok.col + split + 1 };
    let magnitude = number(num_tok)? as i128;
    Ok(Expr::at(name, if rest.starts_with('-') { -magnitude } else { magnitude }))
}

/// Reads `|`-separated names from `table`, or raw numbers, ORed together.
pub fn bits(tok: Token<'_>, table: &[(u32, &str)], what: &str) -> Result<u32, ParseError> {
    let mut value = 0u32;
    let mut col = tok.col;
    for part in tok.text.split('|') {
        let part_tok = Token { text: part, col };
        value |= match table.iter().find(|(_, name)| *name == part) {
            Some(&(bit, _)) => bit,
            None if part.starts_with(|c: char| c.is_ascii_digit()) => u32::try_from(number(part_tok)?)
                .map_err(|_| ParseError::at(col, format!("{what} `{part}` does not fit in 32 bits")))?,
            None => return Err(ParseError::at(col, format!("unknown {what} `{part}`"))),
        };
        col += part.len() + 1;
    }
    Ok(value)
}

/// Reads one value from `table` by name, or a raw number (advice is a
/// value, not a set of bits).
pub fn named(tok: Token<'_>, table: &[(u32, &str)], what: &str) -> Result<u32, ParseError> {
    if let Some(&(value, _)) = table.iter().find(|(_, name)| *name == tok.text) {
        return Ok(value);
    }
    if !tok.text.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(ParseError::at(tok.col, format!("unknown {what} `{}`", tok.text)));
    }
    u32::try_from(number(tok)?).map_err(|_| ParseError::at(tok.col, format!("{what} does not fit in 32 bits")))
}

/// Reads a protection: `rwx`-style letters with `-` for absent ones
/// (`rw-`, `---`), or a number for raw bits.
pub fn prot(tok: Token<'_>) -> Result<u32, ParseError> {
    let text = tok.text;
    if text.starts_with(|c: char| c.is_ascii_digit()) {
        return u32::try_from(number(tok)?).map_err(|_| ParseError::at(tok.col, "protection too large".into()));
    }
    let letters: Vec<char> = text.chars().collect();
    if letters.len() != 3 {
        return Err(ParseError::at(tok.col, format!("expected a protection like `rw-`, found `{text}`")));
    }
    let mut value = 0;
    for (i, &(bit, letter)) in super::ast::PROT_BITS.iter().enumerate() {
        match letters[i] {
            c if c == letter => value |= bit,
            '-' => {}
            c => return Err(ParseError::at(tok.col + i, format!("expected `{letter}` or `-`, found `{c}`"))),
        }
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tok(text: &str) -> Token<'_> {
        Token { text, col: 1 }
    }

    #[test]
    fn tokens_carry_columns_and_split_at_equals() {
        let t = tokens("a =mmap  w 4p # note");
        let words: Vec<_> = t.iter().map(|t| (t.text, t.col)).collect();
        assert_eq!(words, [("a", 1), ("=", 3), ("mmap", 4), ("w", 10), ("4p", 12)]);
    }

    #[test]
    fn numbers_take_units_and_reject_overflow() {
        assert_eq!(number(tok("4p")).unwrap(), 16384);
        assert_eq!(number(tok("0x10")).unwrap(), 16);
        assert_eq!(number(tok("2M")).unwrap(), 2 << 20);
        assert!(number(tok("0xffffffffffffffffp")).is_err());
        assert!(number(tok("12q")).is_err());
    }

    #[test]
    fn expressions_and_bits() {
        assert_eq!(expr(tok("a-2p")).unwrap(), Expr::at("a", -8192));
        assert_eq!(expr(tok("0x1000")).unwrap(), Expr::num(0x1000));
        assert!(expr(tok("+3")).is_err());
        let table = [(1, "x"), (2, "y")];
        assert_eq!(bits(tok("x|y|0x8"), &table, "flag").unwrap(), 11);
        assert_eq!(bits(tok("x|zz"), &table, "flag").unwrap_err().col, 3);
        assert_eq!(prot(tok("r-x")).unwrap(), 5);
        assert_eq!(prot(tok("rq-")).unwrap_err().col, 2);
    }
}
