//! The OData query subset Graph supports on the resources the simulator serves: a `$filter` parser and
//! evaluator, `$select`/`$expand` parsing and next-link construction.
//!
//! Parsing is generic; each resource decides which parsed filters it supports (see `routes::users` and
//! `routes::contacts`), so unsupported filters fail with the code that resource's real service uses.

use serde_json::Value;

/// A literal in a filter.
#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    /// `'text'`.
    Str(String),
    /// `true`/`false`.
    Bool(bool),
    /// `null`.
    Null,
    /// A number.
    Num(f64),
    /// An unquoted GUID.
    Guid(String),
}

/// A parsed filter expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// `a and b and ...`.
    And(Vec<Expr>),
    /// `a or b or ...`.
    Or(Vec<Expr>),
    /// `not a`.
    Not(Box<Expr>),
    /// `path op literal` (op lower-cased: eq, ne, gt, ge, lt, le).
    Cmp(Vec<String>, String, Literal),
    /// `path/any(var: body)` (also `Any`).
    Any(Vec<String>, String, Box<Expr>),
    /// `path in (literals)`.
    In(Vec<String>, Vec<Literal>),
    /// `fn(path, literal)` such as `startsWith`/`endsWith`.
    Call(String, Vec<String>, Literal),
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Word(String),
    Str(String),
    LParen,
    RParen,
    Colon,
    Comma,
}

fn tokenize(input: &str) -> Option<Vec<Tok>> {
    let chars: Vec<char> = input.chars().collect();
    let mut i = 0;
    let mut out = Vec::new();
    while i < chars.len() {
        let c = chars[i];
        match c {
            ' ' | '\t' | '\n' | '\r' => i += 1,
            '(' => {
                out.push(Tok::LParen);
                i += 1;
            }
            ')' => {
                out.push(Tok::RParen);
                i += 1;
            }
            ':' => {
                out.push(Tok::Colon);
                i += 1;
            }
            ',' => {
                out.push(Tok::Comma);
                i += 1;
            }
            '\'' => {
                let mut s = String::new();
                i += 1;
                loop {
                    match chars.get(i) {
                        None => return None,
                        Some('\'') if chars.get(i + 1) == Some(&'\'') => {
                            s.push('\'');
                            i += 2;
                        }
                        Some('\'') => {
                            i += 1;
                            break;
                        }
                        Some(ch) => {
                            s.push(*ch);
                            i += 1;
                        }
                    }
                }
                out.push(Tok::Str(s));
            }
            _ if c.is_alphanumeric() || "_$./@-+".contains(c) => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_alphanumeric() || "_$./@-+".contains(chars[i]))
                {
                    i += 1;
                }
                out.push(Tok::Word(chars[start..i].iter().collect()));
            }
            _ => return None,
        }
    }
    Some(out)
}

/// Deepest nesting of parentheses/`not`/lambdas accepted; deeper filters are rejected, not recursed into.
const MAX_DEPTH: usize = 32;

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
    depth: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }
    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.pos).cloned();
        self.pos += 1;
        t
    }
    fn keyword(&self, k: &str) -> bool {
        matches!(self.peek(), Some(Tok::Word(w)) if w.eq_ignore_ascii_case(k))
    }
    fn expect(&mut self, t: Tok) -> Option<()> {
        (self.next()? == t).then_some(())
    }

    fn or(&mut self) -> Option<Expr> {
        let mut items = vec![self.and()?];
        while self.keyword("or") {
            self.pos += 1;
            items.push(self.and()?);
        }
        Some(if items.len() == 1 {
            items.remove(0)
        } else {
            Expr::Or(items)
        })
    }

    fn and(&mut self) -> Option<Expr> {
        let mut items = vec![self.unary()?];
        while self.keyword("and") {
            self.pos += 1;
            items.push(self.unary()?);
        }
        Some(if items.len() == 1 {
            items.remove(0)
        } else {
            Expr::And(items)
        })
    }

    fn unary(&mut self) -> Option<Expr> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return None;
        }
        let e = self.unary_inner();
        self.depth -= 1;
        e
    }

    fn unary_inner(&mut self) -> Option<Expr> {
        if self.keyword("not") {
            self.pos += 1;
            return Some(Expr::Not(Box::new(self.unary()?)));
        }
        if self.peek() == Some(&Tok::LParen) {
            self.pos += 1;
            let e = self.or()?;
            self.expect(Tok::RParen)?;
            return Some(e);
        }
        let Tok::Word(word) = self.next()? else {
            return None;
        };
        // function call: name(path, literal)
        if self.peek() == Some(&Tok::LParen) && !word.contains('/') {
            self.pos += 1;
            let Tok::Word(arg) = self.next()? else {
                return None;
            };
            self.expect(Tok::Comma)?;
            let lit = self.literal()?;
            self.expect(Tok::RParen)?;
            return Some(Expr::Call(word.to_lowercase(), split_path(&arg), lit));
        }
        let mut path = split_path(&word);
        // lambda: path/any(var: expr)
        if self.peek() == Some(&Tok::LParen) {
            let last = path.pop()?;
            if !last.eq_ignore_ascii_case("any") {
                return None;
            }
            self.pos += 1;
            let Tok::Word(var) = self.next()? else {
                return None;
            };
            self.expect(Tok::Colon)?;
            let body = self.or()?;
            self.expect(Tok::RParen)?;
            return Some(Expr::Any(path, var, Box::new(body)));
        }
        if self.keyword("in") {
            self.pos += 1;
            self.expect(Tok::LParen)?;
            let mut lits = vec![self.literal()?];
            while self.peek() == Some(&Tok::Comma) {
                self.pos += 1;
                lits.push(self.literal()?);
            }
            self.expect(Tok::RParen)?;
            return Some(Expr::In(path, lits));
        }
        let Tok::Word(op) = self.next()? else {
            return None;
        };
        let op = op.to_lowercase();
        if !["eq", "ne", "gt", "ge", "lt", "le"].contains(&op.as_str()) {
            return None;
        }
        let lit = self.literal()?;
        Some(Expr::Cmp(path, op, lit))
    }

    fn literal(&mut self) -> Option<Literal> {
        match self.next()? {
            Tok::Str(s) => Some(Literal::Str(s)),
            Tok::Word(w) => {
                if w.eq_ignore_ascii_case("true") {
                    Some(Literal::Bool(true))
                } else if w.eq_ignore_ascii_case("false") {
                    Some(Literal::Bool(false))
                } else if w.eq_ignore_ascii_case("null") {
                    Some(Literal::Null)
                } else if uuid::Uuid::parse_str(&w).is_ok() && w.len() == 36 {
                    Some(Literal::Guid(w.to_lowercase()))
                } else {
                    w.parse::<f64>().ok().map(Literal::Num)
                }
            }
            _ => None,
        }
    }
}

fn split_path(word: &str) -> Vec<String> {
    word.split('/').map(str::to_owned).collect()
}

/// Parses a `$filter` value; `None` when it is not a syntactically valid expression.
pub fn parse_filter(input: &str) -> Option<Expr> {
    let toks = tokenize(input)?;
    if toks.is_empty() {
        return None;
    }
    let mut p = Parser {
        toks,
        pos: 0,
        depth: 0,
    };
    let e = p.or()?;
    (p.pos == p.toks.len()).then_some(e)
}

fn resolve<'a>(
    root: &'a Value,
    var: Option<(&str, &'a Value)>,
    path: &[String],
) -> Option<ResolvedValue<'a>> {
    let (mut cur, rest) = match (var, path.first()) {
        (Some((name, v)), Some(first)) if first == name => (v, &path[1..]),
        _ => (root, path),
    };
    for (i, seg) in rest.iter().enumerate() {
        if seg == "$count" && i == rest.len() - 1 {
            return Some(ResolvedValue::Count(cur.as_array().map_or(0, Vec::len)));
        }
        cur = cur.get(seg.as_str())?;
    }
    Some(ResolvedValue::Value(cur))
}

enum ResolvedValue<'a> {
    Value(&'a Value),
    Count(usize),
}

/// How strings compare: `case_sensitive_ids` makes `.../id` comparisons exact (extended property ids).
#[derive(Debug, Clone, Copy, Default)]
pub struct EvalOptions {
    /// Compare properties named `id` inside lambdas case-sensitively.
    pub case_sensitive_ids: bool,
}

fn literal_matches(value: &Value, lit: &Literal, case_sensitive: bool) -> bool {
    match (value, lit) {
        (Value::String(s), Literal::Str(l)) | (Value::String(s), Literal::Guid(l)) => {
            if case_sensitive {
                s == l
            } else {
                s.to_lowercase() == l.to_lowercase()
            }
        }
        (Value::Bool(b), Literal::Bool(l)) => b == l,
        (Value::Null, Literal::Null) => true,
        (Value::Number(n), Literal::Num(l)) => n.as_f64() == Some(*l),
        _ => false,
    }
}

/// Evaluates a (resource-validated) filter against a JSON object.
pub fn eval(expr: &Expr, root: &Value, opts: EvalOptions) -> bool {
    eval_in(expr, root, None, opts)
}

fn eval_in<'a>(
    expr: &Expr,
    root: &'a Value,
    var: Option<(&str, &'a Value)>,
    opts: EvalOptions,
) -> bool {
    match expr {
        Expr::And(items) => items.iter().all(|e| eval_in(e, root, var, opts)),
        Expr::Or(items) => items.iter().any(|e| eval_in(e, root, var, opts)),
        Expr::Not(e) => !eval_in(e, root, var, opts),
        Expr::Cmp(path, op, lit) => {
            let case_sensitive =
                opts.case_sensitive_ids && var.is_some() && path.last().is_some_and(|p| p == "id");
            let eq = match resolve(root, var, path) {
                Some(ResolvedValue::Count(n)) => matches!(lit, Literal::Num(l) if (n as f64) == *l),
                Some(ResolvedValue::Value(v)) => literal_matches(v, lit, case_sensitive),
                None => *lit == Literal::Null,
            };
            match op.as_str() {
                "eq" => eq,
                "ne" => !eq,
                _ => false,
            }
        }
        Expr::In(path, lits) => match resolve(root, var, path) {
            Some(ResolvedValue::Value(v)) => lits.iter().any(|l| literal_matches(v, l, false)),
            _ => false,
        },
        Expr::Call(name, path, lit) => {
            let (Some(ResolvedValue::Value(Value::String(s))), Literal::Str(l)) =
                (resolve(root, var, path), lit)
            else {
                return false;
            };
            let (s, l) = (s.to_lowercase(), l.to_lowercase());
            match name.as_str() {
                "startswith" => s.starts_with(&l),
                "endswith" => s.ends_with(&l),
                "contains" => s.contains(&l),
                _ => false,
            }
        }
        Expr::Any(path, name, body) => match resolve(root, var, path) {
            Some(ResolvedValue::Value(Value::Array(items))) => items
                .iter()
                .any(|item| eval_in(body, root, Some((name.as_str(), item)), opts)),
            _ => false,
        },
    }
}

/// Splits a `$select` value into property names.
pub fn parse_select(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

/// One `$expand` item: `name` and its inner `$filter`, e.g. `singleValueExtendedProperties($filter=id eq '..')`.
#[derive(Debug, Clone, PartialEq)]
pub struct Expand {
    /// Navigation property.
    pub name: String,
    /// Inner `$filter`, if any.
    pub filter: Option<String>,
}

/// Parses `$expand` (top-level commas only).
pub fn parse_expand(value: &str) -> Option<Vec<Expand>> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    let bytes: Vec<char> = value.chars().collect();
    let mut parts = Vec::new();
    let mut in_str = false;
    for (i, c) in bytes.iter().enumerate() {
        match c {
            '\'' => in_str = !in_str,
            '(' if !in_str => depth += 1,
            ')' if !in_str => depth -= 1,
            ',' if depth == 0 && !in_str => {
                parts.push(bytes[start..i].iter().collect::<String>());
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 || in_str {
        return None;
    }
    parts.push(bytes[start..].iter().collect::<String>());
    for part in parts {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        match part.find('(') {
            None => out.push(Expand {
                name: part.to_owned(),
                filter: None,
            }),
            Some(open) => {
                let inner = part[open + 1..].strip_suffix(')')?;
                let filter = inner.split(';').find_map(|opt| {
                    let (k, v) = opt.split_once('=')?;
                    k.trim()
                        .eq_ignore_ascii_case("$filter")
                        .then(|| v.trim().to_owned())
                });
                out.push(Expand {
                    name: part[..open].trim().to_owned(),
                    filter,
                });
            }
        }
    }
    Some(out)
}

/// Ids named by an extended-property `$expand` filter: `id eq 'a'` or `id eq 'a' or id eq 'b'`.
pub fn expand_ids(filter: &str) -> Option<Vec<String>> {
    fn collect(e: &Expr, out: &mut Vec<String>) -> bool {
        match e {
            Expr::Cmp(path, op, Literal::Str(v))
                if path.len() == 1 && path[0] == "id" && op == "eq" =>
            {
                out.push(v.clone());
                true
            }
            Expr::Or(items) => items.iter().all(|i| collect(i, out)),
            _ => false,
        }
    }
    let e = parse_filter(filter)?;
    let mut out = Vec::new();
    collect(&e, &mut out).then_some(out)
}

/// Rebuilds a raw query string without the keys in `drop` (compared after decoding, case-insensitively)
/// and with `extra` appended.
pub fn rebuild_query(raw_query: &str, drop: &[&str], extra: &[(&str, String)]) -> String {
    let mut parts: Vec<String> = raw_query
        .split('&')
        .filter(|p| !p.is_empty())
        .filter(|p| {
            let key = p.split('=').next().unwrap_or_default();
            let key = percent_decode(key).replace('+', " ");
            !drop.iter().any(|d| d.eq_ignore_ascii_case(&key))
        })
        .map(str::to_owned)
        .collect();
    for (k, v) in extra {
        parts.push(format!(
            "{k}={}",
            url::form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>()
        ));
    }
    parts.join("&")
}

/// Percent-decodes a path segment or query key (`+` is left alone).
pub fn percent_decode(input: &str) -> String {
    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            if let Some(b) = hex {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_graph_filters() {
        let e = parse_filter("accountEnabled eq true and userType eq 'Member'").unwrap();
        assert!(matches!(e, Expr::And(ref v) if v.len() == 2));
        let e =
            parse_filter("assignedLicenses/any(x:x/skuId eq 6fd2c87f-b296-42f0-b197-1e91e994b900)")
                .unwrap();
        assert!(matches!(e, Expr::Any(..)));
        let e = parse_filter("assignedLicenses/$count ne 0").unwrap();
        assert!(matches!(e, Expr::Cmp(ref p, _, Literal::Num(_)) if p[1] == "$count"));
        assert!(parse_filter("singleValueExtendedProperties/Any(ep: ep/id eq 'String {x} Name y' and ep/value eq 'v')").is_some());
        assert!(parse_filter("endsWith(mail,'@x.com')").is_some());
        assert!(parse_filter("userType in ('Member','Guest')").is_some());
        assert!(parse_filter("accountEnabled eq").is_none());
        assert!(parse_filter("'unterminated").is_none());
        assert!(parse_filter("").is_none());
        let deep = format!("{}a eq 1{}", "(".repeat(100_000), ")".repeat(100_000));
        assert!(parse_filter(&deep).is_none());
        assert!(parse_filter(&"not ".repeat(100_000)).is_none());
        assert!(parse_filter("((a eq 1))").is_some());
    }

    #[test]
    fn evaluates() {
        let user = json!({"accountEnabled": true, "userType": "Member", "assignedLicenses": [{"skuId": "6fd2c87f-b296-42f0-b197-1e91e994b900"}]});
        let f = |s: &str| eval(&parse_filter(s).unwrap(), &user, EvalOptions::default());
        assert!(f("accountEnabled eq true and userType eq 'member'"));
        assert!(!f("accountEnabled eq false"));
        assert!(f("assignedLicenses/$count ne 0"));
        assert!(f(
            "assignedLicenses/any(x:x/skuId eq 6FD2C87F-B296-42F0-B197-1E91E994B900)"
        ));
        let c = json!({"ext": [{"id": "String {a} Name X", "value": "Abc"}]});
        let opts = EvalOptions {
            case_sensitive_ids: true,
        };
        assert!(eval(
            &parse_filter("ext/Any(ep: ep/id eq 'String {a} Name X' and ep/value eq 'abc')")
                .unwrap(),
            &c,
            opts
        ));
        assert!(!eval(
            &parse_filter("ext/Any(ep: ep/id eq 'String {a} Name x' and ep/value eq 'abc')")
                .unwrap(),
            &c,
            opts
        ));
    }

    #[test]
    fn expand_parsing() {
        let e = parse_expand("singleValueExtendedProperties($filter=id eq 'String {a} Name X')")
            .unwrap();
        assert_eq!(e[0].name, "singleValueExtendedProperties");
        assert_eq!(
            expand_ids(e[0].filter.as_deref().unwrap()).unwrap(),
            vec!["String {a} Name X".to_owned()]
        );
    }

    #[test]
    fn decoding() {
        assert_eq!(percent_decode("a%2Fb%3D"), "a/b=");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(
            rebuild_query("%24top=5&%24skip=10", &["$skip"], &[("$skip", "20".into())]),
            "%24top=5&$skip=20"
        );
    }
}
