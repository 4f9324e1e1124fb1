//! The emulator's IAM auth policy parser and evaluator (`tests/src/policy.rs`):
//! - arbitrary JSON text: no panic, errors are one line;
//! - generated policies: parse → evaluate is deterministic (twice, and again after a round
//!   trip through the JSON text); turning every `Allow` into `Deny` turns an `Allow` into an
//!   `ExplicitDeny` and leaves an implicit deny alone; an operator and its negation
//!   (`StringEquals`/`StringNotEquals`, …) without `IfExists` or a set qualifier decide
//!   opposite ways for the same request;
//! - `glob` agrees with a plain dynamic-programming wildcard matcher.
#![no_main]

use std::collections::BTreeMap;
use std::sync::Arc;

use arbitrary::Arbitrary;
use lattice_tests::credentials::Identity;
use lattice_tests::policy::{glob, AuthPolicy, Decision, RequestContext};
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};

const KEYS: &[&str] = &[
    "aws:PrincipalTag/team",
    "aws:PrincipalTag/eks-cluster-name",
    "aws:SourceIp",
    "vpc-lattice-svcs:SourceVpc",
    "aws:PrincipalArn",
    "aws:PrincipalAccount",
    "vpc-lattice-svcs:RequestMethod",
];
const WORDS: &[&str] = &[
    "*",
    "?",
    "apps",
    "APPS",
    "eks-cluster2",
    "10.0.0.0/8",
    "10.1.2.3",
    "fd00:ec2:80::/64",
    "true",
    "false",
    "arn:aws:iam::111122223333:role/app-*",
    "arn:aws:vpc-lattice:us-west-2:111122223333:service/svc-0abc/*",
    "arn:aws:sts::111122223333:assumed-role/app/s1",
    "vpc-lattice-svcs:Invoke",
    "vpc-lattice-svcs:*",
    "GET",
];
/// Operators with their negation.
const PAIRS: &[(&str, &str)] = &[
    ("StringEquals", "StringNotEquals"),
    ("StringEqualsIgnoreCase", "StringNotEqualsIgnoreCase"),
    ("StringLike", "StringNotLike"),
    ("ArnEquals", "ArnNotEquals"),
    ("ArnLike", "ArnNotLike"),
    ("IpAddress", "NotIpAddress"),
];
const OTHERS: &[&str] = &["Bool", "Null"];

#[derive(Arbitrary, Debug)]
enum Word {
    Known(u8),
    Any(String),
}

impl Word {
    fn text(&self) -> String {
        match self {
            Word::Known(i) => WORDS[usize::from(*i) % WORDS.len()].to_owned(),
            Word::Any(s) => s.clone(),
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Cond {
    op: u8,
    negate: bool,
    qualifier: u8,
    if_exists: bool,
    key: u8,
    values: Vec<Word>,
}

#[derive(Arbitrary, Debug)]
struct Stmt {
    deny: bool,
    principal: Vec<Word>,
    any_principal: bool,
    not_action: bool,
    actions: Vec<Word>,
    not_resource: bool,
    resources: Vec<Word>,
    conditions: Vec<Cond>,
}

/// The caller: an assumed-role session with tags.
#[derive(Arbitrary, Debug)]
struct Caller {
    role: String,
    session: String,
    tags: Vec<(String, String)>,
}

#[derive(Arbitrary, Debug)]
struct Ctx {
    principal: Option<Caller>,
    action: Word,
    resource: Word,
    keys: Vec<(u8, Vec<Word>)>,
}

#[derive(Arbitrary, Debug)]
struct Input {
    text: String,
    statements: Vec<Stmt>,
    contexts: Vec<Ctx>,
    glob: (String, String, bool),
}

fn operator(c: &Cond) -> String {
    let n = PAIRS.len() + OTHERS.len();
    let i = usize::from(c.op) % n;
    let base = if i < PAIRS.len() {
        if c.negate {
            PAIRS[i].1
        } else {
            PAIRS[i].0
        }
    } else {
        OTHERS[i - PAIRS.len()]
    };
    let q = match c.qualifier % 3 {
        0 => "",
        1 => "ForAnyValue:",
        _ => "ForAllValues:",
    };
    let e = if c.if_exists { "IfExists" } else { "" };
    format!("{q}{base}{e}")
}

fn statement(s: &Stmt, deny: bool) -> Value {
    let mut obj = serde_json::Map::new();
    obj.insert("Effect".into(), json!(if deny { "Deny" } else { "Allow" }));
    obj.insert(
        "Principal".into(),
        if s.any_principal {
            json!("*")
        } else {
            json!({"AWS": s.principal.iter().map(Word::text).collect::<Vec<_>>()})
        },
    );
    let list = |w: &[Word]| json!(w.iter().map(Word::text).collect::<Vec<_>>());
    obj.insert(
        if s.not_action { "NotAction" } else { "Action" }.into(),
        list(&s.actions),
    );
    obj.insert(
        if s.not_resource {
            "NotResource"
        } else {
            "Resource"
        }
        .into(),
        list(&s.resources),
    );
    if !s.conditions.is_empty() {
        let mut block = serde_json::Map::new();
        for c in &s.conditions {
            let entry = block
                .entry(operator(c))
                .or_insert_with(|| json!({}))
                .as_object_mut()
                .unwrap();
            entry.insert(
                KEYS[usize::from(c.key) % KEYS.len()].to_owned(),
                list(&c.values),
            );
        }
        obj.insert("Condition".into(), Value::Object(block));
    }
    Value::Object(obj)
}

fn policy(statements: &[Stmt], effect: Option<bool>) -> Value {
    json!({
        "Version": "2012-10-17",
        "Statement": statements
            .iter()
            .map(|s| statement(s, effect.unwrap_or(s.deny)))
            .collect::<Vec<_>>(),
    })
}

fn context(c: &Ctx) -> RequestContext {
    let principal = c.principal.as_ref().map(|p| {
        Arc::new(Identity {
            account_id: "111122223333".into(),
            role_name: p.role.clone(),
            role_path: "/".into(),
            session_name: p.session.clone(),
            tags: p.tags.iter().cloned().collect::<BTreeMap<_, _>>(),
        })
    });
    let mut ctx = RequestContext::for_principal(principal, &c.action.text(), &c.resource.text());
    for (k, values) in &c.keys {
        ctx.set(
            KEYS[usize::from(*k) % KEYS.len()],
            values.iter().map(Word::text),
        );
    }
    ctx
}

/// Wildcard matching by dynamic programming: `*` any run, `?` one character.
fn reference_glob(p: &[char], t: &[char]) -> bool {
    let mut m = vec![vec![false; t.len() + 1]; p.len() + 1];
    m[0][0] = true;
    for i in 1..=p.len() {
        m[i][0] = m[i - 1][0] && p[i - 1] == '*';
        for j in 1..=t.len() {
            m[i][j] = match p[i - 1] {
                '*' => m[i - 1][j] || m[i][j - 1],
                '?' => m[i - 1][j - 1],
                c => m[i - 1][j - 1] && c == t[j - 1],
            };
        }
    }
    m[p.len()][t.len()]
}

fuzz_target!(|input: Input| {
    // Text: no panic, one-line errors.
    match AuthPolicy::from_json_str(&input.text) {
        Ok(p) => {
            for c in &input.contexts {
                let ctx = context(c);
                assert_eq!(p.evaluate(&ctx), p.evaluate(&ctx));
            }
        }
        Err(e) => assert!(!e.to_string().contains('\n'), "{e}"),
    }

    // glob against the reference (short inputs: the reference is quadratic).
    let (pat, text, ignore_case) = &input.glob;
    if pat.len() + text.len() < 200 {
        let (p, t): (Vec<char>, Vec<char>) = if *ignore_case {
            (
                pat.to_lowercase().chars().collect(),
                text.to_lowercase().chars().collect(),
            )
        } else {
            (pat.chars().collect(), text.chars().collect())
        };
        assert_eq!(
            glob(pat, text, *ignore_case),
            reference_glob(&p, &t),
            "glob({pat:?}, {text:?}, {ignore_case})"
        );
    }

    // Generated policies.
    let doc = policy(&input.statements, None);
    let Ok(parsed) = AuthPolicy::from_value(&doc) else {
        return;
    };
    let again = AuthPolicy::from_json_str(&doc.to_string()).expect("the same policy as text");
    let allows = AuthPolicy::from_value(&policy(&input.statements, Some(false)))
        .expect("only the effects differ");
    let denies = AuthPolicy::from_value(&policy(&input.statements, Some(true)))
        .expect("only the effects differ");
    for c in &input.contexts {
        let ctx = context(c);
        let d = parsed.evaluate(&ctx);
        assert_eq!(d, parsed.evaluate(&ctx), "not deterministic");
        assert_eq!(d, again.evaluate(&ctx), "differs after a text round trip");
        match (allows.evaluate(&ctx), denies.evaluate(&ctx)) {
            (Decision::Allow, Decision::ExplicitDeny)
            | (Decision::ImplicitDeny, Decision::ImplicitDeny) => {}
            other => panic!("flipping the effects gave {other:?}"),
        }
        // Each plain condition against its negation, alone in an allow-all statement.
        for s in &input.statements {
            for cond in &s.conditions {
                if cond.qualifier % 3 != 0
                    || cond.if_exists
                    || usize::from(cond.op) % (PAIRS.len() + OTHERS.len()) >= PAIRS.len()
                {
                    continue;
                }
                let alone = |negate: bool| {
                    let c = Cond {
                        op: cond.op,
                        negate,
                        qualifier: 0,
                        if_exists: false,
                        key: cond.key,
                        values: cond.values.iter().map(|w| Word::Any(w.text())).collect(),
                    };
                    let s = Stmt {
                        deny: false,
                        principal: vec![],
                        any_principal: true,
                        not_action: false,
                        actions: vec![Word::Any("*".into())],
                        not_resource: false,
                        resources: vec![Word::Any("*".into())],
                        conditions: vec![c],
                    };
                    // Not necessarily valid: of two conditions with the same operator and
                    // key, the document keeps the last.
                    AuthPolicy::from_value(&policy(&[s], None))
                        .ok()
                        .map(|p| p.evaluate(&ctx))
                };
                if let (Some(plain), Some(negated)) = (alone(false), alone(true)) {
                    assert_ne!(
                        plain == Decision::Allow,
                        negated == Decision::Allow,
                        "{} and its negation agree",
                        operator(cond)
                    );
                }
            }
        }
    }
});
