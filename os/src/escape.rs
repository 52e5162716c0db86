//! Hostile text (image- or plugin-supplied) on the operator's terminal. Entry names, link targets, annotations,
//! media types, registry replies and signature identities are hostile: printed raw, an escape
//! sequence rewrites the screen and a newline fakes a line of ark's own output. Messages quote
//! such strings with `{:?}` (std's escaping, which also shows where a name starts and ends);
//! [`controls_escaped`] is the backstop for text already formatted (an error chain, where crates'
//! own messages may quote input raw), applied where ark prints its error line.

use std::borrow::Cow;

/// `text` with every character std's `escape_debug` would escape written escaped (`\u{1b}`,
/// `\n`, `\u{202e}`), except quotes and backslashes, which are harmless and would be doubled on
/// text that was escaped once already: control and other non-printing characters never reach
/// the terminal raw, and the result is one line.
pub fn controls_escaped(text: &str) -> Cow<'_, str> {
    let needs = |c: char| !matches!(c, '\\' | '"' | '\'') && c.escape_debug().len() > 1;
    if !text.chars().any(needs) {
        return Cow::Borrowed(text);
    }
    Cow::Owned(
        text.chars()
            .map(|c| {
                if needs(c) {
                    c.escape_debug().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_are_escaped_and_the_rest_kept() {
        assert_eq!(
            controls_escaped("a\x1b[2J\nark: fake line\r\u{202e}"),
            "a\\u{1b}[2J\\nark: fake line\\r\\u{202e}"
        );
        assert_eq!(
            controls_escaped("sm\u{f6}rg\u{e5}s \"x\" \\ ok"),
            "sm\u{f6}rg\u{e5}s \"x\" \\ ok"
        );
        // C1 controls (a CSI on 8-bit terminals) too; what was escaped once stays as it is.
        assert_eq!(controls_escaped("x \u{9b}31m"), "x \\u{9b}31m");
        assert_eq!(controls_escaped(r"C:\dir \u{1b}"), r"C:\dir \u{1b}");
        let once = format!("{:?}", "a\x1b");
        assert_eq!(controls_escaped(&once), once);
    }
}
