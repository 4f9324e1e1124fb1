//! Auth policy evaluation: every operator, qualifiers, missing keys, principals, wildcards
//! and deny precedence; and strict parsing with the place of each error.

use std::sync::Arc;

use lattice_tests::policy::{AuthPolicy, Decision, RequestContext};
use serde_json::{json, Value};

use crate::fixtures::*;

const RESOURCE: &str =
    "arn:aws:vpc-lattice:us-west-2:111122223333:service/svc-0123456789abcdef0/api/items";

fn policy(statements: Value) -> AuthPolicy {
    AuthPolicy::from_value(&json!({"Version": "2012-10-17", "Statement": statements}))
        .unwrap_or_else(|e| panic!("policy should parse: {e}"))
}

/// A context for the cluster2/apps pod identity with the Lattice keys a request carries.
fn ctx() -> RequestContext {
    let mut ctx = RequestContext::for_principal(
        Some(Arc::new(pod_identity("eks-cluster2", "apps"))),
        "vpc-lattice-svcs:Invoke",
        RESOURCE,
    );
    ctx.set("vpc-lattice-svcs:RequestMethod", ["GET"]);
    ctx.set("vpc-lattice-svcs:RequestPath", ["/api/items"]);
    ctx.set("vpc-lattice-svcs:SourceVpc", ["vpc-0aaa1111bbbb2222c"]);
    ctx.set("aws:SourceIp", ["10.0.0.10"]);
    ctx.set("aws:SecureTransport", ["true"]);
    ctx.set("vpc-lattice-svcs:RequestHeader/x-team", ["blue", "green"]);
    ctx
}

fn anonymous() -> RequestContext {
    RequestContext::for_principal(None, "vpc-lattice-svcs:Invoke", RESOURCE)
}

/// Decision of one Allow statement with this condition block, for `ctx()`.
fn allow_if(condition: Value) -> Decision {
    policy(json!({
        "Effect": "Allow", "Principal": "*", "Action": "vpc-lattice-svcs:Invoke",
        "Resource": "*", "Condition": condition
    }))
    .evaluate(&ctx())
}

fn allowed(condition: Value) -> bool {
    allow_if(condition) == Decision::Allow
}

#[test]
fn seed_policy_allows_the_right_cluster_and_namespace_only() {
    let seed = policy(json!([{
        "Effect": "Allow",
        "Principal": "*",
        "Action": "vpc-lattice-svcs:Invoke",
        "Resource": "*",
        "Condition": {"StringEquals": {
            "aws:PrincipalTag/eks-cluster-name": "eks-cluster2",
            "aws:PrincipalTag/kubernetes-namespace": "apps"
        }}
    }]));
    assert_eq!(seed.evaluate(&ctx()), Decision::Allow);
    let other = RequestContext::for_principal(
        Some(Arc::new(pod_identity("eks-cluster1", "apps"))),
        "vpc-lattice-svcs:Invoke",
        RESOURCE,
    );
    assert_eq!(seed.evaluate(&other), Decision::ImplicitDeny);
    let other_ns = RequestContext::for_principal(
        Some(Arc::new(pod_identity("eks-cluster2", "default"))),
        "vpc-lattice-svcs:Invoke",
        RESOURCE,
    );
    assert_eq!(seed.evaluate(&other_ns), Decision::ImplicitDeny);
    assert_eq!(seed.evaluate(&anonymous()), Decision::ImplicitDeny);
}

#[test]
fn string_operators() {
    assert!(allowed(
        json!({"StringEquals": {"aws:PrincipalTag/eks-cluster-name": "eks-cluster2"}})
    ));
    assert!(!allowed(
        json!({"StringEquals": {"aws:PrincipalTag/eks-cluster-name": "EKS-CLUSTER2"}})
    ));
    // Values of one key are alternatives; keys are all required.
    assert!(allowed(
        json!({"StringEquals": {"aws:PrincipalTag/eks-cluster-name": ["x", "eks-cluster2"]}})
    ));
    assert!(!allowed(json!({"StringEquals": {
        "aws:PrincipalTag/eks-cluster-name": "eks-cluster2",
        "aws:PrincipalTag/kubernetes-namespace": "kube-system"
    }})));
    // Condition key names are case-insensitive.
    assert!(allowed(
        json!({"StringEquals": {"AWS:principaltag/EKS-Cluster-Name": "eks-cluster2"}})
    ));
    assert!(allowed(
        json!({"StringNotEquals": {"aws:PrincipalTag/eks-cluster-name": "eks-cluster1"}})
    ));
    assert!(!allowed(
        json!({"StringNotEquals": {"aws:PrincipalTag/eks-cluster-name": ["eks-cluster1", "eks-cluster2"]}})
    ));
    assert!(allowed(
        json!({"StringEqualsIgnoreCase": {"aws:PrincipalTag/eks-cluster-name": "EKS-Cluster2"}})
    ));
    assert!(!allowed(
        json!({"StringNotEqualsIgnoreCase": {"aws:PrincipalTag/eks-cluster-name": "EKS-Cluster2"}})
    ));
    assert!(allowed(
        json!({"StringLike": {"aws:PrincipalTag/eks-cluster-name": "eks-*"}})
    ));
    assert!(allowed(
        json!({"StringLike": {"aws:PrincipalTag/eks-cluster-name": "eks-cluster?"}})
    ));
    assert!(!allowed(
        json!({"StringLike": {"aws:PrincipalTag/eks-cluster-name": "prod-*"}})
    ));
    assert!(allowed(
        json!({"StringNotLike": {"vpc-lattice-svcs:RequestPath": "/admin/*"}})
    ));
    assert!(!allowed(
        json!({"StringNotLike": {"vpc-lattice-svcs:RequestPath": "/api/*"}})
    ));
    assert!(allowed(
        json!({"StringEquals": {"vpc-lattice-svcs:RequestMethod": ["GET", "HEAD"]}})
    ));
    assert!(!allowed(
        json!({"StringEquals": {"vpc-lattice-svcs:RequestMethod": "POST"}})
    ));
    assert!(allowed(
        json!({"StringEquals": {"vpc-lattice-svcs:SourceVpc": "vpc-0aaa1111bbbb2222c"}})
    ));
    assert!(allowed(
        json!({"StringEquals": {"aws:PrincipalAccount": ACCOUNT}})
    ));
}

#[test]
fn arn_operators() {
    let role = format!("arn:aws:iam::{ACCOUNT}:role/eks-cluster2-app-role");
    assert!(allowed(json!({"ArnEquals": {"aws:PrincipalArn": role}})));
    assert!(allowed(
        json!({"ArnLike": {"aws:PrincipalArn": "arn:aws:iam::*:role/eks-cluster2-*"}})
    ));
    assert!(!allowed(
        json!({"ArnLike": {"aws:PrincipalArn": "arn:aws:iam::*:role/eks-cluster1-*"}})
    ));
    assert!(!allowed(
        json!({"ArnNotEquals": {"aws:PrincipalArn": role}})
    ));
    assert!(allowed(
        json!({"ArnNotLike": {"aws:PrincipalArn": "arn:aws:iam::999999999999:*"}})
    ));
}

#[test]
fn bool_null_and_ip_operators() {
    assert!(allowed(json!({"Bool": {"aws:SecureTransport": "true"}})));
    assert!(allowed(json!({"Bool": {"aws:SecureTransport": true}})));
    assert!(!allowed(json!({"Bool": {"aws:SecureTransport": "false"}})));
    assert!(allowed(
        json!({"Null": {"aws:PrincipalTag/eks-cluster-name": "false"}})
    ));
    assert!(!allowed(
        json!({"Null": {"aws:PrincipalTag/eks-cluster-name": "true"}})
    ));
    assert!(allowed(
        json!({"Null": {"aws:PrincipalTag/not-set": "true"}})
    ));
    assert!(allowed(
        json!({"IpAddress": {"aws:SourceIp": "10.0.0.0/16"}})
    ));
    assert!(allowed(
        json!({"IpAddress": {"aws:SourceIp": ["192.168.0.0/16", "10.0.0.10"]}})
    ));
    assert!(!allowed(
        json!({"IpAddress": {"aws:SourceIp": "10.1.0.0/16"}})
    ));
    assert!(allowed(
        json!({"NotIpAddress": {"aws:SourceIp": "10.1.0.0/16"}})
    ));
    assert!(!allowed(
        json!({"NotIpAddress": {"aws:SourceIp": "10.0.0.0/8"}})
    ));
}

#[test]
fn missing_keys_if_exists_and_set_qualifiers() {
    // A key the request does not have: positive operators fail, negated ones hold.
    assert!(!allowed(
        json!({"StringEquals": {"aws:PrincipalTag/absent": "x"}})
    ));
    assert!(allowed(
        json!({"StringNotEquals": {"aws:PrincipalTag/absent": "x"}})
    ));
    assert!(!allowed(
        json!({"IpAddress": {"aws:VpcSourceIp": "10.0.0.0/8"}})
    ));
    // IfExists: holds when the key is absent, is the plain operator otherwise.
    assert!(allowed(
        json!({"StringEqualsIfExists": {"aws:PrincipalTag/absent": "x"}})
    ));
    assert!(allowed(
        json!({"StringEqualsIfExists": {"aws:PrincipalTag/eks-cluster-name": "eks-cluster2"}})
    ));
    assert!(!allowed(
        json!({"StringEqualsIfExists": {"aws:PrincipalTag/eks-cluster-name": "eks-cluster1"}})
    ));
    assert!(allowed(
        json!({"ArnLikeIfExists": {"aws:SourceArn": "arn:aws:x:::y"}})
    ));
    assert!(allowed(
        json!({"BoolIfExists": {"aws:ViaAWSService": "true"}})
    ));
    // Multi-valued key (two x-team values: blue, green).
    let header = "vpc-lattice-svcs:RequestHeader/x-team";
    assert!(allowed(
        json!({"ForAnyValue:StringEquals": {header: "green"}})
    ));
    assert!(!allowed(
        json!({"ForAnyValue:StringEquals": {header: "red"}})
    ));
    assert!(allowed(
        json!({"ForAllValues:StringEquals": {header: ["blue", "green", "red"]}})
    ));
    assert!(!allowed(
        json!({"ForAllValues:StringEquals": {header: "blue"}})
    ));
    assert!(allowed(
        json!({"ForAllValues:StringNotEquals": {header: "red"}})
    ));
    assert!(!allowed(
        json!({"ForAllValues:StringNotEquals": {header: "blue"}})
    ));
    assert!(allowed(
        json!({"ForAnyValue:StringNotLike": {header: "b*"}})
    ));
    // Absent key: ForAllValues holds (vacuously), ForAnyValue does not.
    assert!(allowed(
        json!({"ForAllValues:StringEquals": {"aws:TagKeys": "x"}})
    ));
    assert!(!allowed(
        json!({"ForAnyValue:StringEquals": {"aws:TagKeys": "x"}})
    ));
}

#[test]
fn explicit_deny_wins_over_allow() {
    let p = policy(json!([
        {"Effect": "Allow", "Principal": "*", "Action": "*", "Resource": "*"},
        {"Effect": "Deny", "Principal": "*", "Action": "vpc-lattice-svcs:Invoke", "Resource": "*",
         "Condition": {"StringEquals": {"aws:PrincipalTag/kubernetes-namespace": "apps"}}}
    ]));
    assert_eq!(p.evaluate(&ctx()), Decision::ExplicitDeny);
    // The deny's condition does not hold for an anonymous caller: the allow applies.
    assert_eq!(p.evaluate(&anonymous()), Decision::Allow);
    // Order does not matter.
    let reversed = policy(json!([
        {"Effect": "Deny", "Principal": {"AWS": ACCOUNT}, "Action": "*", "Resource": "*"},
        {"Effect": "Allow", "Principal": "*", "Action": "*", "Resource": "*"}
    ]));
    assert_eq!(reversed.evaluate(&ctx()), Decision::ExplicitDeny);
    // No statement at all applies: implicit deny.
    let none = policy(
        json!({"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject", "Resource": "*"}),
    );
    assert_eq!(none.evaluate(&ctx()), Decision::ImplicitDeny);
}

#[test]
fn principals() {
    let decide = |principal: Value, ctx: &RequestContext| {
        policy(json!({"Effect": "Allow", "Principal": principal, "Action": "*", "Resource": "*"}))
            .evaluate(ctx)
    };
    let role = format!("arn:aws:iam::{ACCOUNT}:role/eks-cluster2-app-role");
    let session = pod_identity("eks-cluster2", "apps").assumed_role_arn();
    for allowed in [
        json!("*"),
        json!({"AWS": "*"}),
        json!({"AWS": ACCOUNT}),
        json!({"AWS": format!("arn:aws:iam::{ACCOUNT}:root")}),
        json!({"AWS": role}),
        json!({"AWS": ["arn:aws:iam::999999999999:root", session]}),
    ] {
        assert_eq!(
            decide(allowed.clone(), &ctx()),
            Decision::Allow,
            "{allowed}"
        );
    }
    for denied in [
        json!({"AWS": "999999999999"}),
        json!({"AWS": format!("arn:aws:iam::{ACCOUNT}:role/other-role")}),
        json!({"AWS": format!("arn:aws:iam::{ACCOUNT}:user/eks-cluster2-app-role")}),
    ] {
        assert_eq!(
            decide(denied.clone(), &ctx()),
            Decision::ImplicitDeny,
            "{denied}"
        );
    }
    // Anonymous callers match only "*".
    assert_eq!(decide(json!("*"), &anonymous()), Decision::Allow);
    assert_eq!(
        decide(json!({"AWS": ACCOUNT}), &anonymous()),
        Decision::ImplicitDeny
    );
}

#[test]
fn actions_and_resources_with_wildcards() {
    let decide = |action: Value, resource: Value| {
        policy(json!({"Effect": "Allow", "Principal": "*", "Action": action, "Resource": resource}))
            .evaluate(&ctx())
    };
    assert_eq!(
        decide(json!("vpc-lattice-svcs:*"), json!(RESOURCE)),
        Decision::Allow
    );
    assert_eq!(
        decide(json!("VPC-LATTICE-SVCS:invoke"), json!("*")),
        Decision::Allow
    );
    assert_eq!(
        decide(json!(["s3:*", "vpc-lattice-svcs:Inv?ke"]), json!("*")),
        Decision::Allow
    );
    assert_eq!(
        decide(json!("vpc-lattice:*"), json!("*")),
        Decision::ImplicitDeny
    );
    assert_eq!(
        decide(
            json!("*"),
            json!("arn:aws:vpc-lattice:us-west-2:111122223333:service/svc-0123456789abcdef0/*")
        ),
        Decision::Allow
    );
    assert_eq!(
        decide(
            json!("*"),
            json!("arn:aws:vpc-lattice:*:*:service/svc-*/api/*")
        ),
        Decision::Allow
    );
    assert_eq!(
        decide(
            json!("*"),
            json!(
                "arn:aws:vpc-lattice:us-west-2:111122223333:service/svc-0123456789abcdef0/admin/*"
            )
        ),
        Decision::ImplicitDeny
    );
    let not = |statement: Value| policy(statement).evaluate(&ctx());
    assert_eq!(
        not(json!({"Effect": "Allow", "Principal": "*", "NotAction": "s3:*", "Resource": "*"})),
        Decision::Allow
    );
    assert_eq!(
        not(
            json!({"Effect": "Allow", "Principal": "*", "Action": "*", "NotResource": "arn:*/admin/*"})
        ),
        Decision::Allow
    );
    assert_eq!(
        not(
            json!({"Effect": "Allow", "Principal": "*", "Action": "*", "NotResource": "arn:*/api/*"})
        ),
        Decision::ImplicitDeny
    );
}

#[test]
fn malformed_policies_name_the_place() {
    let cases: Vec<(Value, &str)> = vec![
        (json!([]), "policy: expected a JSON object"),
        (json!({"Version": "2012-10-17"}), "Statement: missing"),
        (json!({"Statement": []}), "Statement: empty"),
        (json!({"Statement": {}, "Versoin": "x"}), "Versoin: unknown policy element"),
        (json!({"Version": "2020-01-01", "Statement": []}), "Version: \"2020-01-01\" is not a policy version"),
        (
            json!({"Statement": [{"Effect": "Allow", "Principal": "*", "Action": "*", "Resource": "*"},
                                  {"Effect": "Permit", "Principal": "*", "Action": "*", "Resource": "*"}]}),
            "Statement[1].Effect: \"Permit\" is not an effect",
        ),
        (
            json!({"Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}),
            "Statement[0].Principal: missing",
        ),
        (
            json!({"Statement": [{"Effect": "Allow", "Principal": {"AWS": ["111122223333", "bob"]}, "Action": "*", "Resource": "*"}]}),
            "Statement[0].Principal.AWS[1]: 'bob' is not a principal",
        ),
        (
            json!({"Statement": [{"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "*", "Resource": "*"}]}),
            "Statement[0].Principal.Service: principal type not supported",
        ),
        (
            json!({"Statement": [{"Effect": "Allow", "NotPrincipal": "*", "Action": "*", "Resource": "*"}]}),
            "Statement[0].NotPrincipal: not supported",
        ),
        (
            json!({"Statement": [{"Effect": "Allow", "Principal": "*", "Resource": "*"}]}),
            "Statement[0].Action: missing",
        ),
        (
            json!({"Statement": [{"Effect": "Allow", "Principal": "*", "Action": "Invoke", "Resource": "*"}]}),
            "Statement[0].Action[0]: 'Invoke' is not an action",
        ),
        (
            json!({"Statement": [{"Effect": "Allow", "Principal": "*", "Action": "*", "Resource": "svc-1"}]}),
            "Statement[0].Resource[0]: 'svc-1' is not a resource",
        ),
        (
            json!({"Statement": [{"Effect": "Allow", "Principal": "*", "Action": "*", "Resource": "*", "NotResource": "*"}]}),
            "Statement[0].NotResource: a statement has Resource or NotResource, not both",
        ),
        (
            json!({"Statement": [{"Effect": "Allow", "Principal": "*", "Action": "*", "Resource": "*", "Conditon": {}}]}),
            "Statement[0].Conditon: unknown statement element",
        ),
        (
            json!({"Statement": [{"Effect": "Allow", "Principal": "*", "Action": "*", "Resource": "*",
                                   "Condition": {"StringEqual": {"aws:PrincipalTag/x": "y"}}}]}),
            "Statement[0].Condition.StringEqual: unknown condition operator",
        ),
        (
            json!({"Statement": [{"Effect": "Allow", "Principal": "*", "Action": "*", "Resource": "*",
                                   "Condition": {"NumericLessThan": {"aws:MultiFactorAuthAge": "3600"}}}]}),
            "Statement[0].Condition.NumericLessThan: condition operator not supported",
        ),
        (
            json!({"Statement": [{"Effect": "Allow", "Principal": "*", "Action": "*", "Resource": "*",
                                   "Condition": {"IpAddress": {"aws:SourceIp": ["10.0.0.0/8", "10.0.0.0/33"]}}}]}),
            "Statement[0].Condition.IpAddress.aws:SourceIp[1]: '10.0.0.0/33' is not an IP address or CIDR block",
        ),
        (
            json!({"Statement": [{"Effect": "Allow", "Principal": "*", "Action": "*", "Resource": "*",
                                   "Condition": {"Bool": {"aws:SecureTransport": "yes"}}}]}),
            "Statement[0].Condition.Bool.aws:SecureTransport: 'yes' is not \"true\" or \"false\"",
        ),
        (
            json!({"Statement": [{"Effect": "Allow", "Principal": "*", "Action": "*", "Resource": "*",
                                   "Condition": {"StringEquals": {"aws:PrincipalTag/x": {"nested": 1}}}}]}),
            "Statement[0].Condition.StringEquals.aws:PrincipalTag/x: expected a string, boolean or number",
        ),
        (
            json!({"Statement": [{"Effect": "Allow", "Principal": "*", "Action": "*", "Resource": "*",
                                   "Condition": {"StringEquals": {"aws:PrincipalTag/x": "${aws:username}"}}}]}),
            "Statement[0].Condition.StringEquals.aws:PrincipalTag/x: '${aws:username}' uses a policy variable",
        ),
        (
            json!({"Statement": [{"Effect": "Allow", "Principal": "*", "Action": "*", "Resource": "*",
                                   "Condition": {"NullIfExists": {"aws:PrincipalTag/x": "true"}}}]}),
            "Statement[0].Condition.NullIfExists: Null has no IfExists form",
        ),
    ];
    for (doc, expected) in cases {
        let err = AuthPolicy::from_value(&doc).expect_err(&doc.to_string());
        assert!(
            err.to_string().starts_with(expected),
            "policy {doc}\n  error: {err}\n  expected to start with: {expected}"
        );
    }
    let err =
        AuthPolicy::from_json_str("{\"Statement\": [\n  {\"Effect\": \"Allow\",}\n]}").unwrap_err();
    assert!(err.to_string().starts_with("line 2, column"), "{err}");
}
