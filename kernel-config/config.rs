//! Checking that a kernel `.config` has every option a profile fragment sets: the same rule
//! build.sh applies after `olddefconfig` (Kconfig silently drops an option whose dependencies
//! are off, so a fragment line that did not survive is a bug in the fragment).

use std::collections::BTreeMap;
use std::fmt;

/// One option a fragment sets: `CONFIG_X=value`, or `# CONFIG_X is not set` (value `None`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    pub symbol: String,
    pub value: Option<String>,
}

/// An option of the fragment whose value in the `.config` differs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    pub symbol: String,
    /// What the fragment asks for (`None`: not set).
    pub wanted: Option<String>,
    /// What the `.config` has (`None`: not set or absent).
    pub got: Option<String>,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "n".to_string());
        write!(
            f,
            "{}: wanted {}, got {}",
            self.symbol,
            show(&self.wanted),
            self.got.clone().unwrap_or_else(|| "not set".to_string())
        )
    }
}

fn parse_line(line: &str) -> Option<Setting> {
    let line = line.trim();
    if let Some(rest) = line.strip_prefix("# ") {
        let symbol = rest.strip_suffix(" is not set")?;
        return is_symbol(symbol).then(|| Setting {
            symbol: symbol.to_string(),
            value: None,
        });
    }
    let (symbol, value) = line.split_once('=')?;
    // `=n` is how a .config spells "not set" when written by hand.
    let value = (value != "n").then(|| value.to_string());
    is_symbol(symbol).then(|| Setting {
        symbol: symbol.to_string(),
        value,
    })
}

fn is_symbol(s: &str) -> bool {
    s.strip_prefix("CONFIG_").is_some_and(|name| {
        !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    })
}

/// Every option a fragment (or a whole `.config`) sets, in order; comments and blank lines are
/// skipped.
pub fn parse(text: &str) -> Vec<Setting> {
    text.lines().filter_map(parse_line).collect()
}

/// The options of `fragment` whose value in `config` differs. An option the fragment turns off
/// may be absent from `config` (its menu is hidden), which Kconfig treats as off too.
pub fn check(fragment: &str, config: &str) -> Vec<Mismatch> {
    let have: BTreeMap<String, Option<String>> = parse(config)
        .into_iter()
        .map(|s| (s.symbol, s.value))
        .collect();
    parse(fragment)
        .into_iter()
        .filter_map(|want| {
            let got = have.get(&want.symbol).cloned().flatten();
            (got != want.value).then_some(Mismatch {
                symbol: want.symbol,
                wanted: want.value,
                got,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_set_unset_and_values_and_skips_comments() {
        let s = parse(
            "# a comment\n\nCONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=\"x y\"\nCONFIG_D=64\n\
             CONFIG_E=n\n# CONFIG_ is not set\nNOT_CONFIG=y\n",
        );
        let got: Vec<(&str, Option<&str>)> = s
            .iter()
            .map(|s| (s.symbol.as_str(), s.value.as_deref()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("CONFIG_A", Some("y")),
                ("CONFIG_B", None),
                ("CONFIG_C", Some("\"x y\"")),
                ("CONFIG_D", Some("64")),
                ("CONFIG_E", None),
            ]
        );
    }

    #[test]
    fn reports_dropped_changed_and_unwanted_options() {
        let fragment = "CONFIG_A=y\nCONFIG_NR=64\n# CONFIG_SMP is not set\n# CONFIG_GONE is not set\nCONFIG_KEPT=y\n";
        let config = "CONFIG_NR=8\nCONFIG_SMP=y\nCONFIG_KEPT=y\n# CONFIG_A is not set\n";
        let bad = check(fragment, config);
        let names: Vec<&str> = bad.iter().map(|m| m.symbol.as_str()).collect();
        assert_eq!(names, ["CONFIG_A", "CONFIG_NR", "CONFIG_SMP"]);
        assert_eq!(bad[0].to_string(), "CONFIG_A: wanted y, got not set");
        assert_eq!(bad[1].to_string(), "CONFIG_NR: wanted 64, got 8");
        assert_eq!(bad[2].to_string(), "CONFIG_SMP: wanted n, got y");
        assert!(check(fragment, "CONFIG_A=y\nCONFIG_NR=64\nCONFIG_KEPT=y\n").is_empty());
    }
}
