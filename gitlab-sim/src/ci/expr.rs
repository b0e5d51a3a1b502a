//! GitLab's CI/CD expressions (`rules:if`, `only:variables`, `workflow:rules:if`) and variable
//! expansion, after `lib/gitlab/ci/pipeline/expression/**` and `ExpandVariables`.
//!
//! Values follow Ruby's semantics there: an undefined variable is `nil`, `&&`/`||` return one of
//! their operands (so an empty string is truthy inside them), and the statement is true when the
//! final value is `present?` (not nil, false or empty). `=~` matches an undefined variable as "".

use std::collections::BTreeMap;

/// Variables visible to an expression: name to value.
pub type Vars = BTreeMap<String, String>;

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Var(String),
    Str(String),
    Pattern(String),
    Null,
    Eq,
    Ne,
    Match,
    NoMatch,
    And,
    Or,
    Open,
    Close,
}

/// A parsed expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// `$VAR`
    Var(String),
    /// `"text"`
    Str(String),
    /// `/regex/flags`, as written.
    Pattern(String),
    /// `null`
    Null,
    /// `a == b` (`negated`: `!=`).
    Equals(Box<Expr>, Box<Expr>, bool),
    /// `a =~ b` (`negated`: `!~`).
    Matches(Box<Expr>, Box<Expr>, bool),
    /// `a && b`
    And(Box<Expr>, Box<Expr>),
    /// `a || b`
    Or(Box<Expr>, Box<Expr>),
}

#[derive(Debug, Clone)]
enum Val {
    Nil,
    Str(String),
    Bool(bool),
    Re(regex::Regex),
}

impl Val {
    /// Ruby truthiness (`nil` and `false` only are falsy).
    fn truthy(&self) -> bool {
        !matches!(self, Val::Nil | Val::Bool(false))
    }

    /// ActiveSupport's `present?`.
    fn present(&self) -> bool {
        match self {
            Val::Nil | Val::Bool(false) => false,
            Val::Str(s) => !s.trim().is_empty(),
            _ => true,
        }
    }
}

fn lex(text: &str) -> Result<Vec<Token>, String> {
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    let mut out = Vec::new();
    let err = || "invalid expression syntax".to_owned();
    while i < chars.len() {
        let c = chars[i];
        let two: String = chars[i..(i + 2).min(chars.len())].iter().collect();
        match c {
            ' ' | '\t' | '\n' | '\r' => i += 1,
            '$' => {
                let start = i + 1;
                let mut j = start;
                // GitLab's lexer takes `$NAME` only; `${NAME}` is accepted here as well.
                let braced = chars.get(j) == Some(&'{');
                if braced {
                    j += 1;
                }
                let name_start = j;
                while j < chars.len() && (chars[j].is_alphanumeric() || chars[j] == '_') {
                    j += 1;
                }
                if j == name_start {
                    return Err(err());
                }
                let name: String = chars[name_start..j].iter().collect();
                if braced {
                    if chars.get(j) != Some(&'}') {
                        return Err(err());
                    }
                    j += 1;
                }
                out.push(Token::Var(name));
                i = j;
            }
            '"' | '\'' => {
                let end = chars[i + 1..].iter().position(|x| *x == c).ok_or_else(err)? + i + 1;
                out.push(Token::Str(chars[i + 1..end].iter().collect()));
                i = end + 1;
            }
            '/' => {
                // `/([^/]|\\/)+[^\\]/[ismU]*`
                let mut j = i + 1;
                let mut body = String::new();
                loop {
                    match chars.get(j) {
                        None => return Err(err()),
                        Some('\\') if chars.get(j + 1) == Some(&'/') => {
                            body.push('/');
                            j += 2;
                        }
                        Some('\\') => {
                            body.push('\\');
                            if let Some(n) = chars.get(j + 1) {
                                body.push(*n);
                            }
                            j += 2;
                        }
                        Some('/') => break,
                        Some(x) => {
                            body.push(*x);
                            j += 1;
                        }
                    }
                }
                if body.is_empty() {
                    return Err(err());
                }
                j += 1;
                let mut flags = String::new();
                while let Some(f @ ('i' | 's' | 'm' | 'U')) = chars.get(j) {
                    flags.push(*f);
                    j += 1;
                }
                out.push(Token::Pattern(format!("/{body}/{flags}")));
                i = j;
            }
            '(' => {
                out.push(Token::Open);
                i += 1;
            }
            ')' => {
                out.push(Token::Close);
                i += 1;
            }
            _ => {
                let tok = match two.as_str() {
                    "==" => Token::Eq,
                    "!=" => Token::Ne,
                    "=~" => Token::Match,
                    "!~" => Token::NoMatch,
                    "&&" => Token::And,
                    "||" => Token::Or,
                    _ if chars[i..].iter().take(4).collect::<String>() == "null" => {
                        out.push(Token::Null);
                        i += 4;
                        continue;
                    }
                    _ => return Err(err()),
                };
                out.push(tok);
                i += 2;
            }
        }
    }
    Ok(out)
}

struct Parser {
    toks: Vec<Token>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.toks.get(self.pos)
    }

    fn next(&mut self) -> Option<Token> {
        let t = self.toks.get(self.pos).cloned();
        self.pos += 1;
        t
    }

    // Precedence, loosest first: `||`, `&&`, comparisons (as GitLab's 12, 11, 10).
    fn or(&mut self) -> Result<Expr, String> {
        let mut left = self.and()?;
        while self.peek() == Some(&Token::Or) {
            self.next();
            left = Expr::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Expr, String> {
        let mut left = self.cmp()?;
        while self.peek() == Some(&Token::And) {
            self.next();
            left = Expr::And(Box::new(left), Box::new(self.cmp()?));
        }
        Ok(left)
    }

    fn cmp(&mut self) -> Result<Expr, String> {
        let mut left = self.atom()?;
        loop {
            let op = match self.peek() {
                Some(Token::Eq) => (false, false),
                Some(Token::Ne) => (false, true),
                Some(Token::Match) => (true, false),
                Some(Token::NoMatch) => (true, true),
                _ => return Ok(left),
            };
            self.next();
            let right = self.atom()?;
            left = if op.0 {
                Expr::Matches(Box::new(left), Box::new(right), op.1)
            } else {
                Expr::Equals(Box::new(left), Box::new(right), op.1)
            };
        }
    }

    fn atom(&mut self) -> Result<Expr, String> {
        match self.next() {
            Some(Token::Var(v)) => Ok(Expr::Var(v)),
            Some(Token::Str(s)) => Ok(Expr::Str(s)),
            Some(Token::Pattern(p)) => {
                compile_pattern(&p).map_err(|_| "Invalid regular expression!".to_owned())?;
                Ok(Expr::Pattern(p))
            }
            Some(Token::Null) => Ok(Expr::Null),
            Some(Token::Open) => {
                let inner = self.or()?;
                if self.next() != Some(Token::Close) {
                    return Err("invalid expression syntax".into());
                }
                Ok(inner)
            }
            _ => Err("invalid expression syntax".into()),
        }
    }
}

/// Parses an expression; the error is GitLab's (`invalid expression syntax`).
pub fn parse(text: &str) -> Result<Expr, String> {
    let toks = lex(text)?;
    if toks.is_empty() {
        return Err("invalid expression syntax".into());
    }
    let mut p = Parser { toks, pos: 0 };
    let e = p.or()?;
    if p.pos != p.toks.len() {
        return Err("invalid expression syntax".into());
    }
    Ok(e)
}

/// A `/regex/flags` literal as a RE2-like regex (the `regex` crate's syntax is close to RE2's).
pub fn compile_pattern(text: &str) -> Result<regex::Regex, String> {
    let body = text.strip_prefix('/').ok_or("not a pattern")?;
    let end = body.rfind('/').ok_or("not a pattern")?;
    let (re, flags) = (&body[..end], &body[end + 1..]);
    if !flags.chars().all(|f| "ismU".contains(f)) {
        return Err("invalid flags".into());
    }
    let full = if flags.is_empty() { re.to_owned() } else { format!("(?{flags}){re}") };
    regex::Regex::new(&full).map_err(|e| e.to_string())
}

fn eval(e: &Expr, vars: &Vars) -> Val {
    match e {
        Expr::Var(name) => vars.get(name).map(|v| Val::Str(v.clone())).unwrap_or(Val::Nil),
        Expr::Str(s) => Val::Str(s.clone()),
        Expr::Pattern(p) => compile_pattern(p).map(Val::Re).unwrap_or(Val::Nil),
        Expr::Null => Val::Nil,
        Expr::Equals(a, b, negated) => {
            let same = match (eval(a, vars), eval(b, vars)) {
                (Val::Nil, Val::Nil) => true,
                (Val::Str(x), Val::Str(y)) => x == y,
                (Val::Bool(x), Val::Bool(y)) => x == y,
                (Val::Re(x), Val::Re(y)) => x.as_str() == y.as_str(),
                _ => false,
            };
            Val::Bool(same != *negated)
        }
        Expr::Matches(a, b, negated) => {
            let text = match eval(a, vars) {
                Val::Str(s) => s,
                _ => String::new(),
            };
            let re = match eval(b, vars) {
                Val::Re(r) => Some(r),
                // A variable holding `/regex/` is used as the regex.
                Val::Str(s) => compile_pattern(&s).ok(),
                _ => None,
            };
            match re {
                None => Val::Bool(false),
                Some(re) => Val::Bool(re.is_match(&text) != *negated),
            }
        }
        Expr::And(a, b) => {
            let l = eval(a, vars);
            if l.truthy() { eval(b, vars) } else { l }
        }
        Expr::Or(a, b) => {
            let l = eval(a, vars);
            if l.truthy() { l } else { eval(b, vars) }
        }
    }
}

/// Whether `text` is true for `vars` (an unparsable expression is false; it was checked at load).
pub fn evaluate(text: &str, vars: &Vars) -> bool {
    parse(text).map(|e| eval(&e, vars).present()).unwrap_or(false)
}

/// Expands `$VAR`, `${VAR}` and `%VAR%` in `text` (undefined: empty), as `ExpandVariables`; `$$`
/// is a literal `$`.
pub fn expand(text: &str, vars: &Vars) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_';
    while i < chars.len() {
        let c = chars[i];
        if c == '$' && chars.get(i + 1) == Some(&'$') {
            out.push('$');
            i += 2;
        } else if c == '$' && chars.get(i + 1) == Some(&'{') {
            if let Some(end) = chars[i + 2..].iter().position(|x| *x == '}') {
                let name: String = chars[i + 2..i + 2 + end].iter().collect();
                if !name.is_empty() && name.chars().all(is_name) {
                    out.push_str(vars.get(&name).map(String::as_str).unwrap_or(""));
                    i += end + 3;
                    continue;
                }
            }
            out.push(c);
            i += 1;
        } else if c == '$' && chars.get(i + 1).is_some_and(|x| is_name(*x)) {
            let mut j = i + 1;
            while j < chars.len() && is_name(chars[j]) {
                j += 1;
            }
            let name: String = chars[i + 1..j].iter().collect();
            out.push_str(vars.get(&name).map(String::as_str).unwrap_or(""));
            i = j;
        } else if c == '%' {
            let end = chars[i + 1..].iter().position(|x| *x == '%');
            match end {
                Some(end) if end > 0 && chars[i + 1..i + 1 + end].iter().all(|x| is_name(*x)) => {
                    let name: String = chars[i + 1..i + 1 + end].iter().collect();
                    match vars.get(&name) {
                        Some(v) => {
                            out.push_str(v);
                            i += end + 2;
                        }
                        None => {
                            out.push(c);
                            i += 1;
                        }
                    }
                }
                _ => {
                    out.push(c);
                    i += 1;
                }
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

/// Expands every value against the others (a value may refer to any variable, as GitLab sorts
/// variables by their references before expanding); `raw` names are left as written. A cycle
/// leaves the values involved unexpanded.
pub fn expand_all(vars: &[(String, String, bool)]) -> Vars {
    let mut raw: Vars = BTreeMap::new();
    let mut keep: BTreeMap<String, bool> = BTreeMap::new();
    for (k, v, is_raw) in vars {
        raw.insert(k.clone(), v.clone());
        keep.insert(k.clone(), *is_raw);
    }
    let mut done: Vars = BTreeMap::new();
    for key in raw.keys() {
        let mut seen = Vec::new();
        let v = resolve(key, &raw, &keep, &mut done, &mut seen);
        done.insert(key.clone(), v);
    }
    done
}

fn resolve(key: &str, raw: &Vars, keep: &BTreeMap<String, bool>, done: &mut Vars, seen: &mut Vec<String>) -> String {
    if let Some(v) = done.get(key) {
        return v.clone();
    }
    let Some(value) = raw.get(key) else { return String::new() };
    if keep.get(key).copied().unwrap_or(false) || seen.iter().any(|s| s == key) {
        return value.clone();
    }
    seen.push(key.to_owned());
    let mut lookup = Vars::new();
    for name in referenced(value) {
        if raw.contains_key(&name) {
            let v = resolve(&name, raw, keep, done, seen);
            lookup.insert(name, v);
        }
    }
    seen.pop();
    expand(value, &lookup)
}

fn referenced(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(pos) = rest.find(['$', '%']) {
        let after = &rest[pos + 1..];
        let after = after.strip_prefix('{').unwrap_or(after);
        let name: String = after.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        if !name.is_empty() {
            names.push(name);
        }
        rest = &rest[pos + 1..];
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vars {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn evaluates_like_gitlab() {
        let v = vars(&[("SRC", "api"), ("BR", "main"), ("EMPTY", ""), ("RE", "/^rel/"), ("TAG", "v1.2")]);
        assert!(evaluate(r#"$SRC == "api""#, &v));
        assert!(evaluate(r#"$SRC != "push""#, &v));
        assert!(!evaluate(r#"$SRC == "push" || $BR == "dev""#, &v));
        assert!(evaluate(r#"$SRC == "push" || $BR == 'main'"#, &v));
        assert!(evaluate(r#"($SRC == "push" || $SRC == "api") && $BR == "main""#, &v));
        assert!(evaluate("$TAG =~ /^v\\d+\\.\\d+$/", &v));
        assert!(evaluate("$BR =~ /^MAIN$/i", &v));
        assert!(evaluate("$BR !~ /^rel/", &v));
        assert!(evaluate("\"release-1\" =~ $RE", &v));
        assert!(evaluate("$NOPE == null", &v));
        assert!(!evaluate("$EMPTY == null", &v));
        assert!(!evaluate("$EMPTY", &v));
        assert!(!evaluate("$NOPE", &v));
        assert!(evaluate("$BR", &v));
        // Ruby's `&&`: an empty string is truthy there, and the right side decides.
        assert!(evaluate("$EMPTY && $BR", &v));
        assert!(evaluate("$NOPE =~ /^$/", &v));
        assert!(evaluate("$BR == \"x\" || $SRC == \"api\" && $BR == \"main\"", &v));
        assert!(parse("$A ==").is_err());
        assert!(parse("$A = \"x\"").is_err());
        assert!(parse("$A =~ /(/").is_err());
    }

    #[test]
    fn expands_variables() {
        let v = vars(&[("A", "x"), ("B", "y")]);
        assert_eq!(expand("$A-${B}-%A%-$C-$$A", &v), "x-y-x--$A");
        let all = expand_all(&[
            ("OUT".into(), "build/$BOARD".into(), false),
            ("BOARD".into(), "${CHIP}-dk".into(), false),
            ("CHIP".into(), "nrf52".into(), false),
            ("RAW".into(), "$CHIP".into(), true),
            ("LOOP".into(), "$LOOP".into(), false),
        ]);
        assert_eq!(all["OUT"], "build/nrf52-dk");
        assert_eq!(all["RAW"], "$CHIP");
        assert_eq!(all["LOOP"], "$LOOP");
    }
}
