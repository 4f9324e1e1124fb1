//! IAM auth policies of Lattice services: parsing (strict, with the place of every error)
//! and evaluation of `vpc-lattice-svcs:Invoke` requests.
//!
//! Supported: `Version`, `Id`, `Statement` (an object or a list); in a statement `Sid`,
//! `Effect`, `Principal` (`*`, `{"AWS": …}` with `*`, an account id, an account root ARN,
//! a role ARN or an assumed-role session ARN, one or a list), `Action`/`NotAction` and
//! `Resource`/`NotResource` with `*`/`?` wildcards, and `Condition` with the operators
//! `StringEquals`, `StringNotEquals`, `StringEqualsIgnoreCase`, `StringNotEqualsIgnoreCase`,
//! `StringLike`, `StringNotLike`, `ArnEquals`, `ArnNotEquals`, `ArnLike`, `ArnNotLike`,
//! `Bool`, `Null`, `IpAddress`, `NotIpAddress`, each with the `IfExists` suffix (not `Null`)
//! and the `ForAnyValue:`/`ForAllValues:` qualifiers.
//!
//! Anything else (other principal types, `NotPrincipal`, numeric and date operators, policy
//! variables such as `${aws:PrincipalTag/x}`) is refused at load with the place named, rather
//! than evaluated wrongly.
//!
//! Evaluation follows IAM: an explicit deny wins, then any allow, otherwise the request is
//! implicitly denied. Inside a condition block every operator and every key must match (AND);
//! the values listed for one key are alternatives (OR). A key missing from the request makes
//! a positive operator false and a negated one (`StringNotEquals`, …) true, `IfExists` makes
//! either true, `ForAllValues` is true and `ForAnyValue` false.

use std::{collections::HashMap, net::IpAddr, sync::Arc};

use ipnet::IpNet;
use serde_json::Value;

use crate::credentials::Identity;

/// A policy that could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{place}: {message}")]
pub struct PolicyError {
    /// Where in the policy, e.g. `Statement[1].Condition.StringEquals.aws:PrincipalTag/team`.
    pub place: String,
    /// What is wrong and what is expected instead.
    pub message: String,
}

fn err<T>(place: &str, message: impl Into<String>) -> Result<T, PolicyError> {
    Err(PolicyError {
        place: place.to_owned(),
        message: message.into(),
    })
}

/// The outcome of evaluating a policy for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// A statement allows the request and none denies it.
    Allow,
    /// No statement allows the request.
    ImplicitDeny,
    /// A statement denies the request.
    ExplicitDeny,
}

/// What a policy is evaluated against.
#[derive(Debug, Clone)]
pub struct RequestContext {
    /// The caller; `None` for an anonymous (unsigned) request.
    pub principal: Option<Arc<Identity>>,
    /// The action, `vpc-lattice-svcs:Invoke` for requests through Lattice.
    pub action: String,
    /// The resource ARN, `arn:aws:vpc-lattice:<region>:<acct>:service/svc-…/<path>`.
    pub resource: String,
    keys: HashMap<String, Vec<String>>,
}

impl RequestContext {
    /// A context without condition keys. Use [`RequestContext::for_principal`] to get the
    /// `aws:Principal*` keys filled in.
    pub fn new(principal: Option<Arc<Identity>>, action: &str, resource: &str) -> Self {
        Self {
            principal,
            action: action.to_owned(),
            resource: resource.to_owned(),
            keys: HashMap::new(),
        }
    }

    /// A context with `aws:PrincipalArn`, `aws:PrincipalAccount`, `aws:PrincipalType` and
    /// `aws:PrincipalTag/*` set from the principal (none for an anonymous caller).
    pub fn for_principal(principal: Option<Arc<Identity>>, action: &str, resource: &str) -> Self {
        let mut ctx = Self::new(principal.clone(), action, resource);
        if let Some(identity) = principal {
            ctx.set("aws:PrincipalArn", [identity.role_arn()]);
            ctx.set("aws:PrincipalAccount", [identity.account_id.clone()]);
            ctx.set("aws:PrincipalType", ["AssumedRole"]);
            for (key, value) in &identity.tags {
                ctx.set(&format!("aws:PrincipalTag/{key}"), [value.clone()]);
            }
        }
        ctx
    }

    /// Sets a condition key (names are case-insensitive, as in IAM).
    pub fn set<I, S>(&mut self, key: &str, values: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.keys.insert(
            key.to_ascii_lowercase(),
            values.into_iter().map(Into::into).collect(),
        );
    }

    /// The values of a condition key, if the request has it.
    pub fn get(&self, key: &str) -> Option<&[String]> {
        self.keys
            .get(&key.to_ascii_lowercase())
            .map(Vec::as_slice)
            .filter(|v| !v.is_empty())
    }
}

/// A parsed auth policy.
#[derive(Debug, Clone)]
pub struct AuthPolicy {
    statements: Vec<Statement>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Effect {
    Allow,
    Deny,
}

#[derive(Debug, Clone)]
struct Statement {
    effect: Effect,
    principals: Vec<PrincipalPattern>,
    actions: Patterns,
    resources: Patterns,
    conditions: Vec<Condition>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum PrincipalPattern {
    Anyone,
    Account(String),
    Role(String),
    Session(String),
    /// An IAM user: valid in a policy, but no emulated caller is a user.
    User(String),
}

#[derive(Debug, Clone)]
struct Patterns {
    values: Vec<String>,
    negated: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Operator {
    StringEquals,
    StringNotEquals,
    StringEqualsIgnoreCase,
    StringNotEqualsIgnoreCase,
    StringLike,
    StringNotLike,
    ArnEquals,
    ArnNotEquals,
    ArnLike,
    ArnNotLike,
    Bool,
    Null,
    IpAddress,
    NotIpAddress,
}

impl Operator {
    fn parse(name: &str) -> Option<Self> {
        use Operator::*;
        Some(match name {
            "StringEquals" => StringEquals,
            "StringNotEquals" => StringNotEquals,
            "StringEqualsIgnoreCase" => StringEqualsIgnoreCase,
            "StringNotEqualsIgnoreCase" => StringNotEqualsIgnoreCase,
            "StringLike" => StringLike,
            "StringNotLike" => StringNotLike,
            "ArnEquals" => ArnEquals,
            "ArnNotEquals" => ArnNotEquals,
            "ArnLike" => ArnLike,
            "ArnNotLike" => ArnNotLike,
            "Bool" => Bool,
            "Null" => Null,
            "IpAddress" => IpAddress,
            "NotIpAddress" => NotIpAddress,
            _ => return None,
        })
    }

    fn negated(self) -> bool {
        use Operator::*;
        matches!(
            self,
            StringNotEquals
                | StringNotEqualsIgnoreCase
                | StringNotLike
                | ArnNotEquals
                | ArnNotLike
                | NotIpAddress
        )
    }

    /// Whether a request value matches a policy value, in the operator's positive sense.
    fn positive_match(self, request: &str, policy: &PolicyValue) -> bool {
        use Operator::*;
        match (self, policy) {
            (StringEquals | StringNotEquals, PolicyValue::Text(p)) => request == p,
            (StringEqualsIgnoreCase | StringNotEqualsIgnoreCase, PolicyValue::Text(p)) => {
                request.to_lowercase() == p.to_lowercase()
            }
            (StringLike | StringNotLike, PolicyValue::Text(p)) => glob(p, request, false),
            (ArnEquals | ArnNotEquals | ArnLike | ArnNotLike, PolicyValue::Text(p)) => {
                arn_like(p, request)
            }
            (Bool, PolicyValue::Text(p)) => request.eq_ignore_ascii_case(p),
            (IpAddress | NotIpAddress, PolicyValue::Net(net)) => {
                request.parse::<IpAddr>().is_ok_and(|ip| net.contains(&ip))
            }
            _ => false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Qualifier {
    Single,
    ForAnyValue,
    ForAllValues,
}

#[derive(Debug, Clone)]
enum PolicyValue {
    Text(String),
    Net(IpNet),
}

#[derive(Debug, Clone)]
struct Condition {
    operator: Operator,
    qualifier: Qualifier,
    if_exists: bool,
    key: String,
    values: Vec<PolicyValue>,
}

impl Condition {
    fn holds(&self, ctx: &RequestContext) -> bool {
        if self.operator == Operator::Null {
            let absent = ctx.get(&self.key).is_none();
            return self.values.iter().any(|v| match v {
                PolicyValue::Text(t) => t.eq_ignore_ascii_case("true") == absent,
                PolicyValue::Net(_) => false,
            });
        }
        let Some(request_values) = ctx.get(&self.key) else {
            return self.if_exists
                || match self.qualifier {
                    Qualifier::ForAllValues => true,
                    Qualifier::ForAnyValue => false,
                    Qualifier::Single => self.operator.negated(),
                };
        };
        let matches = |v: &String| {
            self.values
                .iter()
                .any(|p| self.operator.positive_match(v, p))
        };
        let negated = self.operator.negated();
        match self.qualifier {
            Qualifier::Single if negated => !request_values.iter().any(matches),
            Qualifier::Single => request_values.iter().any(matches),
            Qualifier::ForAnyValue if negated => request_values.iter().any(|v| !matches(v)),
            Qualifier::ForAnyValue => request_values.iter().any(matches),
            Qualifier::ForAllValues if negated => request_values.iter().all(|v| !matches(v)),
            Qualifier::ForAllValues => request_values.iter().all(matches),
        }
    }
}

impl AuthPolicy {
    /// Parses a policy document from JSON text.
    pub fn from_json_str(text: &str) -> Result<Self, PolicyError> {
        let value: Value = serde_json::from_str(text).map_err(|e| PolicyError {
            place: format!("line {}, column {}", e.line(), e.column()),
            message: format!("not valid JSON: {e}"),
        })?;
        Self::from_value(&value)
    }

    /// Parses a policy document.
    pub fn from_value(value: &Value) -> Result<Self, PolicyError> {
        let Some(doc) = value.as_object() else {
            return err("policy", "expected a JSON object with a \"Statement\"");
        };
        for (key, value) in doc {
            match key.as_str() {
                "Statement" | "Id" => {}
                "Version" => match value.as_str() {
                    Some("2012-10-17" | "2008-10-17") => {}
                    _ => {
                        return err(
                            "Version",
                            format!("{value} is not a policy version; use \"2012-10-17\""),
                        )
                    }
                },
                other => {
                    return err(
                        other,
                        "unknown policy element; expected Version, Id or Statement",
                    )
                }
            }
        }
        let statements = match doc.get("Statement") {
            None => {
                return err(
                    "Statement",
                    "missing; a policy needs at least one statement",
                )
            }
            Some(Value::Array(list)) => list
                .iter()
                .enumerate()
                .map(|(i, s)| Statement::parse(s, &format!("Statement[{i}]")))
                .collect::<Result<Vec<_>, _>>()?,
            Some(single @ Value::Object(_)) => vec![Statement::parse(single, "Statement")?],
            Some(other) => {
                return err(
                    "Statement",
                    format!("expected an object or a list of objects, got {other}"),
                )
            }
        };
        if statements.is_empty() {
            return err("Statement", "empty; a policy needs at least one statement");
        }
        Ok(Self { statements })
    }

    /// Evaluates the policy: explicit deny first, then allow, else implicit deny.
    pub fn evaluate(&self, ctx: &RequestContext) -> Decision {
        let mut allowed = false;
        for statement in &self.statements {
            if statement.applies(ctx) {
                match statement.effect {
                    Effect::Deny => return Decision::ExplicitDeny,
                    Effect::Allow => allowed = true,
                }
            }
        }
        if allowed {
            Decision::Allow
        } else {
            Decision::ImplicitDeny
        }
    }
}

impl Statement {
    fn parse(value: &Value, place: &str) -> Result<Self, PolicyError> {
        let Some(obj) = value.as_object() else {
            return err(place, format!("expected a statement object, got {value}"));
        };
        for key in obj.keys() {
            match key.as_str() {
                "Sid" | "Effect" | "Principal" | "Action" | "NotAction" | "Resource"
                | "NotResource" | "Condition" => {}
                "NotPrincipal" => {
                    return err(
                        &format!("{place}.NotPrincipal"),
                        "not supported by the emulator; use Principal with a Deny statement",
                    )
                }
                other => {
                    return err(
                        &format!("{place}.{other}"),
                        "unknown statement element; expected Sid, Effect, Principal, \
                         Action/NotAction, Resource/NotResource or Condition",
                    )
                }
            }
        }
        let effect = match obj.get("Effect").and_then(Value::as_str) {
            Some("Allow") => Effect::Allow,
            Some("Deny") => Effect::Deny,
            _ => {
                return err(
                    &format!("{place}.Effect"),
                    match obj.get("Effect") {
                        None => "missing; use \"Allow\" or \"Deny\"".to_owned(),
                        Some(v) => format!("{v} is not an effect; use \"Allow\" or \"Deny\""),
                    },
                )
            }
        };
        let principals = match obj.get("Principal") {
            None => {
                return err(
                    &format!("{place}.Principal"),
                    "missing; an auth policy statement names its principal (\"*\" for anyone)",
                )
            }
            Some(p) => parse_principal(p, &format!("{place}.Principal"))?,
        };
        let actions = parse_patterns(obj, "Action", "NotAction", place, |p, v| {
            if v == "*"
                || v.split_once(':')
                    .is_some_and(|(s, a)| !s.is_empty() && !a.is_empty())
            {
                Ok(())
            } else {
                err(
                    p,
                    format!("'{v}' is not an action; expected \"service:Action\" or \"*\""),
                )
            }
        })?;
        let resources = parse_patterns(obj, "Resource", "NotResource", place, |p, v| {
            if v == "*" || v.starts_with("arn:") {
                Ok(())
            } else {
                err(
                    p,
                    format!("'{v}' is not a resource; expected an ARN or \"*\""),
                )
            }
        })?;
        let conditions = match obj.get("Condition") {
            None => Vec::new(),
            Some(c) => parse_conditions(c, &format!("{place}.Condition"))?,
        };
        Ok(Self {
            effect,
            principals,
            actions,
            resources,
            conditions,
        })
    }

    fn applies(&self, ctx: &RequestContext) -> bool {
        self.principals
            .iter()
            .any(|p| principal_matches(p, ctx.principal.as_deref()))
            && self.actions.matches(&ctx.action, true)
            && self.resources.matches(&ctx.resource, false)
            && self.conditions.iter().all(|c| c.holds(ctx))
    }
}

impl Patterns {
    fn matches(&self, value: &str, ignore_case: bool) -> bool {
        self.values.iter().any(|p| glob(p, value, ignore_case)) != self.negated
    }
}

fn principal_matches(pattern: &PrincipalPattern, caller: Option<&Identity>) -> bool {
    match (pattern, caller) {
        (PrincipalPattern::Anyone, _) => true,
        (_, None) => false,
        (PrincipalPattern::Account(acct), Some(id)) => &id.account_id == acct,
        (PrincipalPattern::Role(arn), Some(id)) => &id.role_arn() == arn,
        (PrincipalPattern::Session(arn), Some(id)) => &id.assumed_role_arn() == arn,
        (PrincipalPattern::User(_), Some(_)) => false,
    }
}

/// Reads a string or a list of strings.
fn strings(value: &Value, place: &str) -> Result<Vec<String>, PolicyError> {
    let list = match value {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(s) => Ok(s.clone()),
                other => err(
                    &format!("{place}[{i}]"),
                    format!("expected a string, got {other}"),
                ),
            })
            .collect::<Result<_, _>>()?,
        other => {
            return err(
                place,
                format!("expected a string or a list of strings, got {other}"),
            )
        }
    };
    if list.is_empty() {
        return err(place, "empty list");
    }
    Ok(list)
}

fn parse_principal(value: &Value, place: &str) -> Result<Vec<PrincipalPattern>, PolicyError> {
    match value {
        Value::String(s) if s == "*" => Ok(vec![PrincipalPattern::Anyone]),
        Value::Object(map) => {
            let mut out = Vec::new();
            for (kind, ids) in map {
                let place = format!("{place}.{kind}");
                if kind != "AWS" {
                    return err(
                        &place,
                        "principal type not supported by the emulator; use \"AWS\" or \"*\"",
                    );
                }
                for (i, id) in strings(ids, &place)?.into_iter().enumerate() {
                    out.push(parse_aws_principal(&id, &format!("{place}[{i}]"))?);
                }
            }
            if out.is_empty() {
                return err(place, "no principal given");
            }
            Ok(out)
        }
        other => err(
            place,
            format!("expected \"*\" or {{\"AWS\": ...}}, got {other}"),
        ),
    }
}

fn is_account_id(s: &str) -> bool {
    s.len() == 12 && s.bytes().all(|b| b.is_ascii_digit())
}

fn parse_aws_principal(id: &str, place: &str) -> Result<PrincipalPattern, PolicyError> {
    if id == "*" {
        return Ok(PrincipalPattern::Anyone);
    }
    if is_account_id(id) {
        return Ok(PrincipalPattern::Account(id.to_owned()));
    }
    let bad = || {
        err(
            place,
            format!(
                "'{id}' is not a principal; expected \"*\", a 12-digit account id, \
                 arn:aws:iam::<acct>:root, arn:aws:iam::<acct>:role/<name>, \
                 arn:aws:iam::<acct>:user/<name> or arn:aws:sts::<acct>:assumed-role/<role>/<session>"
            ),
        )
    };
    let parts: Vec<&str> = id.splitn(6, ':').collect();
    let [arn, partition, service, region, account, resource] = parts.as_slice() else {
        return bad();
    };
    if *arn != "arn" || partition.is_empty() || !region.is_empty() || !is_account_id(account) {
        return bad();
    }
    match (*service, *resource) {
        ("iam", "root") => Ok(PrincipalPattern::Account((*account).to_owned())),
        ("iam", r) if r.starts_with("role/") && r.len() > 5 => {
            Ok(PrincipalPattern::Role(id.to_owned()))
        }
        ("iam", r) if r.starts_with("user/") && r.len() > 5 => {
            Ok(PrincipalPattern::User(id.to_owned()))
        }
        ("sts", r) if r.starts_with("assumed-role/") && r.split('/').count() == 3 => {
            Ok(PrincipalPattern::Session(id.to_owned()))
        }
        _ => bad(),
    }
}

fn parse_patterns(
    obj: &serde_json::Map<String, Value>,
    name: &str,
    not_name: &str,
    place: &str,
    check: impl Fn(&str, &str) -> Result<(), PolicyError>,
) -> Result<Patterns, PolicyError> {
    let (key, negated) = match (obj.get(name), obj.get(not_name)) {
        (Some(_), Some(_)) => {
            return err(
                &format!("{place}.{not_name}"),
                format!("a statement has {name} or {not_name}, not both"),
            )
        }
        (Some(_), None) => (name, false),
        (None, Some(_)) => (not_name, true),
        (None, None) => {
            return err(
                &format!("{place}.{name}"),
                format!("missing; a statement needs {name} or {not_name}"),
            )
        }
    };
    let place = format!("{place}.{key}");
    let values = strings(&obj[key], &place)?;
    for (i, v) in values.iter().enumerate() {
        check(&format!("{place}[{i}]"), v)?;
        reject_policy_variables(&format!("{place}[{i}]"), v)?;
    }
    Ok(Patterns { values, negated })
}

fn reject_policy_variables(place: &str, value: &str) -> Result<(), PolicyError> {
    if value.contains("${") {
        return err(
            place,
            format!("'{value}' uses a policy variable, which the emulator does not support"),
        );
    }
    Ok(())
}

fn parse_conditions(value: &Value, place: &str) -> Result<Vec<Condition>, PolicyError> {
    let Some(block) = value.as_object() else {
        return err(
            place,
            format!("expected an object of operators, got {value}"),
        );
    };
    let mut out = Vec::new();
    for (op_name, keys) in block {
        let op_place = format!("{place}.{op_name}");
        let (qualifier, rest) = if let Some(rest) = op_name.strip_prefix("ForAnyValue:") {
            (Qualifier::ForAnyValue, rest)
        } else if let Some(rest) = op_name.strip_prefix("ForAllValues:") {
            (Qualifier::ForAllValues, rest)
        } else {
            (Qualifier::Single, op_name.as_str())
        };
        let (base, if_exists) = match rest.strip_suffix("IfExists") {
            Some(base) => (base, true),
            None => (rest, false),
        };
        let operator = match Operator::parse(base) {
            Some(Operator::Null) if if_exists => {
                return err(&op_place, "Null has no IfExists form")
            }
            Some(op) => op,
            None if base.starts_with("Numeric")
                || base.starts_with("Date")
                || base == "BinaryEquals" =>
            {
                return err(
                    &op_place,
                    "condition operator not supported by the emulator",
                )
            }
            None => {
                return err(
                    &op_place,
                    "unknown condition operator; expected e.g. StringEquals, StringLike, \
                     ArnLike, Bool, Null or IpAddress, optionally with IfExists and \
                     ForAnyValue:/ForAllValues:",
                )
            }
        };
        let Some(keys) = keys.as_object() else {
            return err(
                &op_place,
                format!("expected an object of condition keys, got {keys}"),
            );
        };
        if keys.is_empty() {
            return err(&op_place, "no condition key given");
        }
        for (key, values) in keys {
            let key_place = format!("{op_place}.{key}");
            if key.is_empty() || !key.contains(':') {
                return err(
                    &key_place,
                    "not a condition key; expected e.g. aws:PrincipalTag/<tag>",
                );
            }
            let raw: Vec<(String, String)> = match values {
                Value::Array(items) if items.is_empty() => return err(&key_place, "empty list"),
                Value::Array(items) => items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| {
                        Ok((
                            format!("{key_place}[{i}]"),
                            scalar(v, &format!("{key_place}[{i}]"))?,
                        ))
                    })
                    .collect::<Result<_, PolicyError>>()?,
                v => vec![(key_place.clone(), scalar(v, &key_place)?)],
            };
            let mut parsed = Vec::with_capacity(raw.len());
            for (value_place, v) in raw {
                reject_policy_variables(&value_place, &v)?;
                parsed.push(match operator {
                    Operator::Bool | Operator::Null => {
                        if !(v.eq_ignore_ascii_case("true") || v.eq_ignore_ascii_case("false")) {
                            return err(
                                &value_place,
                                format!("'{v}' is not \"true\" or \"false\""),
                            );
                        }
                        PolicyValue::Text(v)
                    }
                    Operator::IpAddress | Operator::NotIpAddress => {
                        let net = v
                            .parse::<IpNet>()
                            .or_else(|_| v.parse::<IpAddr>().map(IpNet::from))
                            .or_else(|_| {
                                err(
                                    &value_place,
                                    format!("'{v}' is not an IP address or CIDR block"),
                                )
                            })?;
                        PolicyValue::Net(net)
                    }
                    _ => PolicyValue::Text(v),
                });
            }
            out.push(Condition {
                operator,
                qualifier,
                if_exists,
                key: key.to_ascii_lowercase(),
                values: parsed,
            });
        }
    }
    Ok(out)
}

/// Condition values may be written as strings, booleans or numbers.
fn scalar(value: &Value, place: &str) -> Result<String, PolicyError> {
    match value {
        Value::String(s) => Ok(s.clone()),
        Value::Bool(b) => Ok(b.to_string()),
        Value::Number(n) => Ok(n.to_string()),
        other => err(
            place,
            format!("expected a string, boolean or number, got {other}"),
        ),
    }
}

/// `*` matches any run of characters, `?` exactly one.
pub fn glob(pattern: &str, text: &str, ignore_case: bool) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = if ignore_case {
        (
            pattern.to_lowercase().chars().collect(),
            text.to_lowercase().chars().collect(),
        )
    } else {
        (pattern.chars().collect(), text.chars().collect())
    };
    // Iterative matching with one backtrack point (the last `*`): linear in practice and
    // never exponential, whatever the pattern.
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        // A `*` in the pattern is a wildcard even where the text has a `*` too: matched as a
        // literal first, `*` did not match `**` (found by fuzzing).
        if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// ARN matching as IAM does it: the six colon-separated parts are matched one by one, so a
/// wildcard never spans a `:` before the resource part.
fn arn_like(pattern: &str, arn: &str) -> bool {
    let p: Vec<&str> = pattern.splitn(6, ':').collect();
    let a: Vec<&str> = arn.splitn(6, ':').collect();
    p.len() == 6 && a.len() == 6 && p.iter().zip(&a).all(|(p, a)| glob(p, a, false))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_handles_stars_and_question_marks() {
        assert!(glob("*", "", false));
        assert!(glob("a*c", "abbbc", false));
        assert!(glob("a?c", "abc", false));
        assert!(!glob("a?c", "ac", false));
        assert!(glob("*b*b*", "abab", false));
        assert!(!glob("ABC", "abc", false));
        assert!(glob("ABC", "abc", true));
        assert!(!glob("a*d", "abc", false));
    }

    /// Found by fuzzing (policy): a `*` in the text was matched literally by the pattern's
    /// `*`, which then could not match the rest: `*` refused `**`, and a resource policy
    /// `.../*/admin` refused the path `/a*b/admin`.
    #[test]
    fn glob_star_matches_text_with_stars() {
        assert!(glob("*", "**", false));
        assert!(glob("*a", "*ba", false));
        assert!(glob("x*", "x**y", true));
        assert!(glob("arn:*/*/admin", "arn:svc/a*b/admin", false));
        assert!(!glob("*a", "*b", false));
    }

    #[test]
    fn arn_like_matches_part_by_part() {
        assert!(arn_like(
            "arn:aws:iam::*:role/app-*",
            "arn:aws:iam::111122223333:role/app-one"
        ));
        assert!(!arn_like(
            "arn:aws:iam::*",
            "arn:aws:iam::111122223333:role/x"
        ));
        assert!(!arn_like("arn:aws:iam::*:role/x", "not-an-arn"));
    }
}
