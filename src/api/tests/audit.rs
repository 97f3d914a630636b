//! Every operation's audit event, the trail's listing and its verification.

use super::*;

#[test]
fn every_operation_and_failure_is_audited_once_for_its_user() {
    let w = World::new();
    let (_, created) = w.add("u_a");
    let id = created["credential"]["id"].as_str().unwrap().to_owned();
    w.call("GET", "/v1/credentials", Some("u_a"), None, vec![]);
    w.call(
        "GET",
        &format!("/v1/credentials/{id}"),
        Some("u_a"),
        None,
        vec![],
    );
    w.call(
        "GET",
        &format!("/v1/credentials/{id}"),
        Some("u_b"),
        None,
        vec![],
    );
    w.call(
        "POST",
        "/v1/credentials",
        Some("u_a"),
        Some(json!({"provider":"elevenlabs","api_key":"sk_other_key_1234567890"})),
        vec![respond(401, INVALID)],
    );
    w.delete(&id);
    let s = |a: &str, o: &str, r: Option<&str>| (a.to_owned(), o.to_owned(), r.map(str::to_owned));
    assert_eq!(
        w.actions("u_a"),
        vec![
            s("credential.created", "success", None),
            s("credential.viewed", "success", None),
            s("credential.viewed", "success", None),
            s("credential.created", "failure", Some("invalid_api_key")),
            s("credential.deleted", "success", None),
        ]
    );
    assert_eq!(
        w.actions("u_b"),
        vec![s("credential.viewed", "failure", Some("not_found"))]
    );
    let (_, body, _) = w.call("GET", "/v1/audit", Some("u_a"), None, vec![]);
    let first = &body["events"][4];
    assert_eq!(first["credential_id"], id.as_str());
    assert_eq!(first["provider"], "elevenlabs");
    assert_eq!(first["actor"], json!({"type":"user","id":"u_a"}));
    assert!(first["request_id"].as_str().unwrap().starts_with("req_"));
    let text = serde_json::to_string(
        &*w.audit
            .rows
            .borrow()
            .iter()
            .map(|r| r.event.clone())
            .collect::<Vec<_>>(),
    )
    .unwrap();
    assert!(!text.contains(KEY));
}

#[test]
fn the_audit_list_pages_filters_and_verifies() {
    let w = World::new();
    w.add("u_a");
    for _ in 0..4 {
        w.call("GET", "/v1/credentials", Some("u_a"), None, vec![]);
    }
    let (s, page1, _) = w.call("GET", "/v1/audit?limit=3", Some("u_a"), None, vec![]);
    assert_eq!(s, 200);
    let seqs = |v: &Value| {
        v["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["seq"].as_u64().unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(seqs(&page1), [5, 4, 3]);
    let cursor = page1["next_cursor"].as_str().unwrap();
    let (_, page2, _) = w.call(
        "GET",
        &format!("/v1/audit?limit=3&cursor={cursor}"),
        Some("u_a"),
        None,
        vec![],
    );
    assert_eq!(seqs(&page2), [2, 1]);
    assert_eq!(page2["next_cursor"], Value::Null);
    let (_, created, _) = w.call(
        "GET",
        "/v1/audit?action=credential.created",
        Some("u_a"),
        None,
        vec![],
    );
    assert_eq!(seqs(&created), [1]);
    for bad in [
        "action=credential.exploded",
        "limit=0",
        "limit=201",
        "cursor=zzz",
        "credential_id=x",
        "colour=red",
    ] {
        let (s, b, _) = w.call(
            "GET",
            &format!("/v1/audit?{bad}"),
            Some("u_a"),
            None,
            vec![],
        );
        assert_eq!(
            (s, b["code"].as_str()),
            (400, Some("invalid_request")),
            "{bad}"
        );
    }
    let (_, v, _) = w.call("GET", "/v1/audit/verify", Some("u_a"), None, vec![]);
    assert_eq!(verdict(&v), json!({"ok": true, "checked": 5}));
    assert_eq!((&v["sealed"], &v["head"]["seq"]), (&json!(true), &json!(5)));
    w.audit.rows.borrow_mut()[2].event.action = crate::audit::Action::CredentialDeleted;
    let (_, v, _) = w.call("GET", "/v1/audit/verify", Some("u_a"), None, vec![]);
    assert_eq!(
        verdict(&v),
        json!({"ok": false, "checked": 2, "broken_seq": 3})
    );
    assert_eq!(v["broken_reason"], "link");
}

#[test]
fn an_unhealthy_audit_path_does_not_change_the_answer() {
    let w = World::new();
    w.audit.down.set(true);
    assert_eq!(w.add("u_a").0, 201);
    assert_eq!(w.store.rows.borrow().len(), 1);
}
