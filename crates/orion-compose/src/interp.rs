//! Variable interpolation as `docker compose` does it (the compose spec's "Interpolation"),
//! and the `.env` file format. Pure: the variables come in as a map.
//!
//! `$VAR`, `${VAR}`, `${VAR:-default}` (unset or empty), `${VAR-default}` (unset),
//! `${VAR:?message}` / `${VAR?message}` (an error), `${VAR:+alt}` / `${VAR+alt}`, and `$$` for a
//! literal `$`. Defaults and messages are interpolated too, so `${A:-${B}}` works.

use std::collections::BTreeMap;

/// Interpolates `text` with `vars`. The error is the sentence to show (the caller adds the
/// file, line and key).
pub fn interpolate(text: &str, vars: &BTreeMap<String, String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        rest = &rest[i + 1..];
        if let Some(r) = rest.strip_prefix('$') {
            out.push('$');
            rest = r;
        } else if let Some(r) = rest.strip_prefix('{') {
            let end = closing_brace(r).ok_or_else(|| {
                format!(
                    "\"${{{}\" has no closing '}}'",
                    r.chars().take(20).collect::<String>()
                )
            })?;
            out.push_str(&braced(&r[..end], vars)?);
            rest = &r[end + 1..];
        } else {
            let n = name_len(rest);
            if n == 0 {
                return Err(format!(
                    "a '$' must start a variable ($VAR, ${{VAR}}) or be doubled ($$) in {text:?}"
                ));
            }
            out.push_str(vars.get(&rest[..n]).map(String::as_str).unwrap_or(""));
            rest = &rest[n..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// The index of the `}` closing a `${`, counting nested `${...}`.
fn closing_brace(s: &str) -> Option<usize> {
    let mut depth = 0usize;
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'$' if bytes.get(i + 1) == Some(&b'{') => {
                depth += 1;
                i += 1;
            }
            b'}' if depth == 0 => return Some(i),
            b'}' => depth -= 1,
            _ => {}
        }
        i += 1;
    }
    None
}

/// Length of the variable name at the start of `s`: `[A-Za-z_][A-Za-z0-9_]*`.
fn name_len(s: &str) -> usize {
    let mut n = 0;
    for (i, c) in s.char_indices() {
        let ok = c == '_' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit());
        if !ok {
            break;
        }
        n = i + c.len_utf8();
    }
    n
}

/// The inside of `${...}`.
fn braced(inner: &str, vars: &BTreeMap<String, String>) -> Result<String, String> {
    let n = name_len(inner);
    if n == 0 {
        return Err(format!(
            "\"${{{inner}}}\" does not start with a variable name"
        ));
    }
    let name = &inner[..n];
    let op = &inner[n..];
    let value = vars.get(name);
    let set = value.is_some();
    let non_empty = value.is_some_and(|v| !v.is_empty());
    let value = value.cloned().unwrap_or_default();
    let arg = |skip: usize| interpolate(&op[skip..], vars);
    Ok(match op {
        "" => value,
        _ if op.starts_with(":-") => {
            if non_empty {
                value
            } else {
                arg(2)?
            }
        }
        _ if op.starts_with('-') => {
            if set {
                value
            } else {
                arg(1)?
            }
        }
        _ if op.starts_with(":?") => {
            if non_empty {
                value
            } else {
                return Err(required(name, &arg(2)?));
            }
        }
        _ if op.starts_with('?') => {
            if set {
                value
            } else {
                return Err(required(name, &arg(1)?));
            }
        }
        _ if op.starts_with(":+") => {
            if non_empty {
                arg(2)?
            } else {
                String::new()
            }
        }
        _ if op.starts_with('+') => {
            if set {
                arg(1)?
            } else {
                String::new()
            }
        }
        _ => {
            return Err(format!(
                "\"${{{inner}}}\": after the name comes one of :- - :? ? :+ +"
            ));
        }
    })
}

fn required(name: &str, message: &str) -> String {
    if message.is_empty() {
        format!("variable {name} is required but not set")
    } else {
        format!("variable {name} is required: {message}")
    }
}

/// Parses a `.env` / `env_file` text: `KEY=VALUE` lines, `export KEY=VALUE`, `#` comments,
/// blank lines, values in single quotes (literal), double quotes (with `\n`, `\"`, `\\`
/// escapes) or bare (trimmed, a ` #` starts a comment). A line `KEY` alone sets nothing
/// (compose takes it from the shell; the caller decides). Errors name the line.
pub fn parse_dotenv(text: &str) -> Result<Vec<(String, Option<String>)>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line).trim_start();
        let (key, value) = match line.split_once('=') {
            Some((k, v)) => (k.trim(), Some(v.trim())),
            None => (line, None),
        };
        if key.is_empty() || name_len(key) != key.len() {
            return Err(format!("line {}: {key:?} is not a variable name", i + 1));
        }
        let value = match value {
            None => None,
            Some(v) if v.starts_with('\'') => Some(
                v[1..]
                    .strip_suffix('\'')
                    .ok_or_else(|| format!("line {}: unclosed single quote", i + 1))?
                    .to_string(),
            ),
            Some(v) if v.starts_with('"') => {
                let inner = v[1..]
                    .strip_suffix('"')
                    .ok_or_else(|| format!("line {}: unclosed double quote", i + 1))?;
                let mut s = String::with_capacity(inner.len());
                let mut chars = inner.chars();
                while let Some(c) = chars.next() {
                    if c == '\\' {
                        match chars.next() {
                            Some('n') => s.push('\n'),
                            Some('t') => s.push('\t'),
                            Some(o) => s.push(o),
                            None => s.push('\\'),
                        }
                    } else {
                        s.push(c);
                    }
                }
                Some(s)
            }
            Some(v) => Some(match v.find(" #") {
                Some(c) => v[..c].trim_end().to_string(),
                None => v.to_string(),
            }),
        };
        out.push((key.to_string(), value));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> BTreeMap<String, String> {
        BTreeMap::from([
            ("TAG".into(), "1.2".into()),
            ("EMPTY".into(), String::new()),
            ("PORT".into(), "8080".into()),
        ])
    }

    /// One row per interpolation case of the compose spec: input, and the output or the
    /// error's text (a part of it).
    #[test]
    fn interpolation_cases() {
        let cases: &[(&str, &str, Result<&str, &str>)] = &[
            ("plain", "no variables", Ok("no variables")),
            ("braced", "img:${TAG}", Ok("img:1.2")),
            ("bare", "img:$TAG", Ok("img:1.2")),
            ("bare ends at a non-name char", "$PORT/tcp", Ok("8080/tcp")),
            ("unset is empty", "a${NOPE}b", Ok("ab")),
            ("bare unset is empty", "a$NOPE", Ok("a")),
            (":- default when unset", "${NOPE:-80}", Ok("80")),
            (":- default when empty", "${EMPTY:-80}", Ok("80")),
            (":- value when set", "${PORT:-80}", Ok("8080")),
            ("- default when unset", "${NOPE-80}", Ok("80")),
            ("- keeps an empty value", "[${EMPTY-80}]", Ok("[]")),
            (
                ":? error when unset",
                "${NOPE:?set NOPE}",
                Err("NOPE is required: set NOPE"),
            ),
            (
                ":? error when empty",
                "${EMPTY:?no}",
                Err("EMPTY is required: no"),
            ),
            (":? value when set", "${TAG:?no}", Ok("1.2")),
            (
                "? error when unset",
                "${NOPE?missing}",
                Err("NOPE is required: missing"),
            ),
            ("? keeps an empty value", "[${EMPTY?no}]", Ok("[]")),
            (
                "? without message",
                "${NOPE?}",
                Err("NOPE is required but not set"),
            ),
            (":+ alternative when set", "${TAG:+yes}", Ok("yes")),
            (":+ nothing when empty", "[${EMPTY:+yes}]", Ok("[]")),
            (
                "+ alternative when set, even empty",
                "${EMPTY+yes}",
                Ok("yes"),
            ),
            ("$$ escapes", "echo $$HOME $${TAG}", Ok("echo $HOME ${TAG}")),
            ("nested default", "${NOPE:-${TAG}}", Ok("1.2")),
            ("nested default twice", "${A:-${B:-deep}}", Ok("deep")),
            ("unclosed", "${TAG", Err("no closing")),
            ("bad operator", "${TAG/x}", Err("after the name")),
            (
                "no name",
                "${:-x}",
                Err("does not start with a variable name"),
            ),
            ("lone dollar", "cost: 5$", Err("must start a variable")),
        ];
        for (what, input, want) in cases {
            let got = interpolate(input, &vars());
            match (want, &got) {
                (Ok(w), Ok(g)) => assert_eq!(g, w, "{what}"),
                (Err(w), Err(g)) => assert!(g.contains(w), "{what}: {g}"),
                _ => panic!("{what}: {input:?} gave {got:?}, wanted {want:?}"),
            }
        }
    }

    #[test]
    fn dotenv_cases() {
        let text = "# comment\n\nA=1\nexport B = two \nC='lit $X # no'\nD=\"q\\n\\\"x\\\"\"\nE=bare # comment\nF=\nG\n";
        let got = parse_dotenv(text).expect("valid");
        let want: Vec<(String, Option<String>)> = [
            ("A", Some("1")),
            ("B", Some("two")),
            ("C", Some("lit $X # no")),
            ("D", Some("q\n\"x\"")),
            ("E", Some("bare")),
            ("F", Some("")),
            ("G", None),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.map(str::to_string)))
        .collect();
        assert_eq!(got, want);
        assert!(parse_dotenv("1A=x").unwrap_err().contains("line 1"));
        assert!(parse_dotenv("A=1\nB='x").unwrap_err().contains("line 2"));
    }
}
