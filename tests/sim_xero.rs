//! The simulated Xero over real HTTP: rotation, grace period, 60-day expiry, Xero's error
//! bodies, rate limits, and every operator action of XERO.md.

mod common;
use chrono::Duration;
use common::*;
use oauth_token_exporter::clock::{Clock, ManualClock, SharedClock};
use oauth_token_exporter::provider::{classify_refresh_error, RefreshError};
use oauth_token_exporter::sim::xero::{SimXero, TokenResponse};
use std::sync::Arc;

struct Sim {
    x: SimXero,
    clock: Arc<ManualClock>,
    base: String,
    http: reqwest::Client,
    tenant: String,
    other_tenant: String,
}

async fn start() -> Sim {
    oauth_token_exporter::sources::install_tls_provider();
    let clock = ManualClock::new(fixed_now());
    let shared: SharedClock = clock.clone();
    let x = SimXero::new(shared);
    x.add_client("app", "s3cret");
    let tenant = x.add_tenant("Acme Plumbing", &["alice"]);
    let other_tenant = x.add_tenant("Bluebird Cafe", &["alice", "bob"]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let router = x.router();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    Sim {
        x,
        clock,
        base,
        http: reqwest::Client::new(),
        tenant,
        other_tenant,
    }
}

impl Sim {
    async fn refresh(&self, rt: &str, secret: &str) -> (u16, String) {
        xero_refresh(&self.http, &self.base, rt, secret).await
    }

    async fn api(&self, at: &str, tenant: &str) -> reqwest::Response {
        xero_api(&self.http, &self.base, at, tenant).await
    }
}

fn tokens(body: &str) -> TokenResponse {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

#[tokio::test]
async fn refresh_rotates_and_the_old_token_works_only_within_the_30_minute_grace() {
    let s = start().await;
    let first =
        s.x.authorize("app", "alice", std::slice::from_ref(&s.tenant));
    let (st, body) = s.refresh(&first.refresh_token, "s3cret").await;
    assert_eq!(st, 200, "{body}");
    let second = tokens(&body);
    assert_ne!(second.refresh_token, first.refresh_token);
    assert_eq!(second.expires_in, 1800);
    // The answer was lost: the old token within the grace period gets the same token set.
    s.clock.advance(Duration::minutes(29));
    let (st, body) = s.refresh(&first.refresh_token, "s3cret").await;
    assert_eq!((st, tokens(&body)), (200, second.clone()));
    // Past the grace period the old token is dead, with Xero's exact body.
    s.clock.advance(Duration::minutes(2));
    assert_eq!(
        s.refresh(&first.refresh_token, "s3cret").await,
        (400, r#"{"error":"invalid_grant"}"#.to_string())
    );
    // The current one still works.
    assert_eq!(s.refresh(&second.refresh_token, "s3cret").await.0, 200);
}

#[tokio::test]
async fn a_refresh_token_dies_after_60_days_without_use() {
    let s = start().await;
    let a =
        s.x.authorize("app", "alice", std::slice::from_ref(&s.tenant));
    let b =
        s.x.authorize("app", "alice", std::slice::from_ref(&s.tenant));
    s.clock.advance(Duration::days(59));
    assert_eq!(
        s.refresh(&a.refresh_token, "s3cret").await.0,
        200,
        "59 days idle still refreshes"
    );
    s.clock.advance(Duration::days(2));
    let (st, body) = s.refresh(&b.refresh_token, "s3cret").await;
    assert_eq!(st, 400);
    assert_eq!(
        classify_refresh_error(st, body.as_bytes()),
        RefreshError::InvalidGrant
    );
}

#[tokio::test]
async fn wrong_body_wrong_secret_and_rotated_secret_get_xeros_errors() {
    let s = start().await;
    let t =
        s.x.authorize("app", "alice", std::slice::from_ref(&s.tenant));
    let json = s
        .http
        .post(format!("{}/connect/token", s.base))
        .basic_auth("app", Some("s3cret"))
        .json(&serde_json::json!({"grant_type": "refresh_token", "refresh_token": t.refresh_token}))
        .send()
        .await
        .unwrap();
    assert_eq!(json.status().as_u16(), 400);
    assert_eq!(
        json.text().await.unwrap(),
        r#"{"error":"unsupported_grant_type"}"#
    );
    let (st, body) = s.refresh(&t.refresh_token, "wrong").await;
    assert_eq!(
        (st, classify_refresh_error(st, body.as_bytes())),
        (400, RefreshError::InvalidClient)
    );
    let new_secret = s.x.rotate_client_secret("app");
    let (st, body) = s.refresh(&t.refresh_token, "s3cret").await;
    assert_eq!(
        classify_refresh_error(st, body.as_bytes()),
        RefreshError::InvalidClient,
        "the old secret stops working"
    );
    assert_eq!(
        s.refresh(&t.refresh_token, &new_secret).await.0,
        200,
        "no re-authorisation needed, only the credentials"
    );
}

#[tokio::test]
async fn api_answers_token_expired_after_30_minutes_and_403_for_a_tenant_not_connected() {
    let s = start().await;
    let t =
        s.x.authorize("app", "alice", std::slice::from_ref(&s.tenant));
    let ok = s.api(&t.access_token, &s.tenant).await;
    assert_eq!(ok.status().as_u16(), 200);
    assert_eq!(ok.headers()["x-minlimit-remaining"], "59");
    assert_eq!(ok.headers()["x-daylimit-remaining"], "4999");
    assert!(ok.headers().contains_key("x-appminlimit-remaining"));
    let wrong = s.api(&t.access_token, &s.other_tenant).await;
    assert_eq!(wrong.status().as_u16(), 403);
    let body: serde_json::Value = wrong.json().await.unwrap();
    assert_eq!(
        (body["Title"].as_str(), body["Detail"].as_str()),
        (Some("Forbidden"), Some("AuthenticationUnsuccessful"))
    );
    s.clock.advance(Duration::minutes(31));
    let expired = s.api(&t.access_token, &s.tenant).await;
    assert_eq!(expired.status().as_u16(), 401);
    let body: serde_json::Value = expired.json().await.unwrap();
    assert_eq!(
        body["Detail"].as_str().unwrap(),
        "TokenExpired: token expired at 06/01/2026 12:30:00"
    );
}

#[tokio::test]
async fn password_change_revokes_every_token_set_of_the_user_and_no_other() {
    let s = start().await;
    let a1 =
        s.x.authorize("app", "alice", std::slice::from_ref(&s.tenant));
    let a2 =
        s.x.authorize("app", "alice", std::slice::from_ref(&s.other_tenant));
    let b =
        s.x.authorize("app", "bob", std::slice::from_ref(&s.other_tenant));
    s.x.change_password("alice");
    for t in [&a1, &a2] {
        assert_eq!(
            s.refresh(&t.refresh_token, "s3cret").await,
            (400, r#"{"error":"invalid_grant"}"#.into())
        );
    }
    let api = s.api(&a1.access_token, &s.tenant).await;
    assert_eq!(api.status().as_u16(), 401);
    assert_eq!(
        api.json::<serde_json::Value>().await.unwrap()["Detail"],
        "AuthorizationUnsuccessful"
    );
    assert_eq!(
        s.refresh(&b.refresh_token, "s3cret").await.0,
        200,
        "bob is unaffected"
    );
}

#[tokio::test]
async fn removed_user_and_disconnected_app_fail_only_where_they_should() {
    let s = start().await;
    let both =
        s.x.authorize("app", "alice", &[s.tenant.clone(), s.other_tenant.clone()]);
    let bob =
        s.x.authorize("app", "bob", std::slice::from_ref(&s.other_tenant));
    // Alice leaves Bluebird: her token set keeps Acme, loses Bluebird.
    s.x.remove_user("alice", &s.other_tenant);
    assert_eq!(
        s.api(&both.access_token, &s.other_tenant)
            .await
            .status()
            .as_u16(),
        403
    );
    assert_eq!(
        s.api(&both.access_token, &s.tenant).await.status().as_u16(),
        200
    );
    // Bluebird disconnects the app: Bob's only tenant goes, so his refresh fails.
    s.x.disconnect(&s.other_tenant, "app");
    let (st, body) = s.refresh(&bob.refresh_token, "s3cret").await;
    assert_eq!(
        classify_refresh_error(st, body.as_bytes()),
        RefreshError::InvalidGrant
    );
}

#[tokio::test]
async fn an_incident_rotates_the_token_but_loses_the_answer_and_the_grace_period_saves_it() {
    let s = start().await;
    let t =
        s.x.authorize("app", "alice", std::slice::from_ref(&s.tenant));
    s.x.set_incident(true);
    let (st, body) = s.refresh(&t.refresh_token, "s3cret").await;
    assert_eq!(st, 500);
    assert_eq!(
        classify_refresh_error(st, body.as_bytes()),
        RefreshError::ServerError
    );
    s.x.set_incident(false);
    // The client never saw the new token; retrying with the old one inside the grace works.
    s.clock.advance(Duration::minutes(5));
    assert_eq!(s.refresh(&t.refresh_token, "s3cret").await.0, 200);
    let outcomes = s.x.refresh_outcomes();
    assert_eq!(
        (outcomes.get("incident"), outcomes.get("ok")),
        (Some(&1), Some(&1))
    );
}

#[tokio::test]
async fn the_61st_call_in_a_minute_is_rate_limited_with_xeros_headers() {
    let s = start().await;
    let t =
        s.x.authorize("app", "alice", std::slice::from_ref(&s.tenant));
    for _ in 0..60 {
        assert_eq!(
            s.api(&t.access_token, &s.tenant).await.status().as_u16(),
            200
        );
    }
    let limited = s.api(&t.access_token, &s.tenant).await;
    assert_eq!(limited.status().as_u16(), 429);
    assert_eq!(limited.headers()["x-rate-limit-problem"], "minute");
    assert_eq!(limited.headers()["x-minlimit-remaining"], "0");
    assert!(
        limited.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse::<u32>()
            .unwrap()
            <= 60
    );
    s.clock.advance(Duration::minutes(1));
    assert_eq!(
        s.api(&t.access_token, &s.tenant).await.status().as_u16(),
        200,
        "the next minute is a new window"
    );
}

#[tokio::test]
async fn revocation_kills_the_token_set_and_connections_lists_tenants() {
    let s = start().await;
    let t =
        s.x.authorize("app", "alice", &[s.tenant.clone(), s.other_tenant.clone()]);
    let list: Vec<serde_json::Value> = s
        .http
        .get(format!("{}/connections", s.base))
        .bearer_auth(&t.access_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["tenantType"], "ORGANISATION");
    let r = s
        .http
        .post(format!("{}/connect/revocation", s.base))
        .basic_auth("app", Some("s3cret"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={}", t.refresh_token))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(s.refresh(&t.refresh_token, "s3cret").await.0, 400);
}

/// The claims of a JWT after its RS256 signature is verified with the key the simulator
/// publishes in its JWKS (found through its discovery document, as openid-client does).
async fn verified_claims(s: &Sim, jwt: &str) -> serde_json::Value {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use base64::Engine;
    let discovery = get_json(
        &s.http,
        &format!("{}/.well-known/openid-configuration", s.base),
    )
    .await;
    let jwks_uri = discovery["jwks_uri"].as_str().unwrap();
    // The discovery document names the issuer's own URLs; fetch the JWKS at this listener.
    let path = jwks_uri.split_once("/.well-known").unwrap().1;
    let jwks = get_json(&s.http, &format!("{}/.well-known{path}", s.base)).await;
    let (input, sig) = jwt.rsplit_once('.').unwrap();
    let (head, body) = input.split_once('.').unwrap();
    let header: serde_json::Value = serde_json::from_slice(&B64.decode(head).unwrap()).unwrap();
    assert_eq!(header["alg"], "RS256");
    let jwk = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == header["kid"])
        .expect("the JWKS holds the token's key");
    let n = B64.decode(jwk["n"].as_str().unwrap()).unwrap();
    let e = B64.decode(jwk["e"].as_str().unwrap()).unwrap();
    ring::rsa::PublicKeyComponents { n, e }
        .verify(
            &ring::signature::RSA_PKCS1_2048_8192_SHA256,
            input.as_bytes(),
            &B64.decode(sig).unwrap(),
        )
        .expect("the id_token's signature verifies with the published key");
    serde_json::from_slice(&B64.decode(body).unwrap()).unwrap()
}

#[tokio::test]
async fn client_secret_post_refreshes_like_basic_and_both_at_once_or_a_wrong_secret_is_invalid_client(
) {
    let s = start().await;
    let first =
        s.x.authorize("app", "alice", std::slice::from_ref(&s.tenant));
    let post = |form: String| {
        s.http
            .post(format!("{}/connect/token", s.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form)
            .send()
    };
    // xero-python's request: the credentials in the form, no Authorization header.
    let r = post(format!(
        "grant_type=refresh_token&refresh_token={}&client_id=app&client_secret=s3cret",
        first.refresh_token
    ))
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let second: TokenResponse = r.json().await.unwrap();
    assert_ne!(second.refresh_token, first.refresh_token, "rotated");
    // Basic refreshes the rotated token as before.
    let (st, _) = xero_refresh(&s.http, &s.base, &second.refresh_token, "s3cret").await;
    assert_eq!(st, 200);
    for (form, basic) in [
        // A wrong posted secret.
        (
            "grant_type=refresh_token&refresh_token=x&client_id=app&client_secret=nope",
            false,
        ),
        // Posted and Basic at once (RFC 6749 2.3: one method per request).
        (
            "grant_type=refresh_token&refresh_token=x&client_id=app&client_secret=s3cret",
            true,
        ),
        // Neither.
        ("grant_type=refresh_token&refresh_token=x", false),
    ] {
        let mut req = s
            .http
            .post(format!("{}/connect/token", s.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form);
        if basic {
            req = req.basic_auth("app", Some("s3cret"));
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 400, "{form}");
        assert_eq!(r.text().await.unwrap(), r#"{"error":"invalid_client"}"#);
    }
}

#[tokio::test]
async fn id_tokens_are_rs256_jwts_with_xeros_claims_verified_by_the_published_jwks() {
    let s = start().await;
    let first =
        s.x.authorize("app", "alice", std::slice::from_ref(&s.tenant));
    let claims = verified_claims(&s, &first.id_token).await;
    let now = s.clock.now().timestamp();
    assert_eq!(
        claims["iss"], "https://identity.xero.com",
        "Xero's issuer by default"
    );
    assert_eq!(claims["aud"], "app");
    assert_eq!(claims["xero_userid"], s.x.xero_userid("alice"));
    assert_eq!(claims["iat"], now);
    assert!(claims["exp"].as_i64().unwrap() > now);
    for claim in [
        "nbf",
        "sid",
        "sub",
        "auth_time",
        "global_session_id",
        "preferred_username",
        "email",
        "given_name",
        "family_name",
        "amr",
        "at_hash",
        "idp",
    ] {
        assert!(!claims[claim].is_null(), "{claim} in {claims}");
    }
    // at_hash binds the id_token to its access token (OpenID Connect Core 3.3.2.11).
    use base64::Engine;
    use sha2::Digest;
    let digest = sha2::Sha256::digest(first.access_token.as_bytes());
    assert_eq!(
        claims["at_hash"],
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&digest[..16])
    );
    // A refresh keeps the subject and session (openid-client checks `sub` on refresh).
    s.clock.advance(Duration::minutes(5));
    let (st, body) = xero_refresh(&s.http, &s.base, &first.refresh_token, "s3cret").await;
    assert_eq!(st, 200);
    let next: TokenResponse = serde_json::from_str(&body).unwrap();
    let again = verified_claims(&s, &next.id_token).await;
    assert_eq!(again["sub"], claims["sub"]);
    assert_eq!(again["sid"], claims["sid"]);
    assert_eq!(again["auth_time"], claims["auth_time"]);
    assert_eq!(again["iat"], now + 300);
    // Another user is another subject.
    let bob =
        s.x.authorize("app", "bob", std::slice::from_ref(&s.other_tenant));
    let bobs = verified_claims(&s, &bob.id_token).await;
    assert_ne!(bobs["sub"], claims["sub"]);
    // Run standalone behind its own URL, it names that URL as issuer everywhere.
    s.x.set_issuer(&format!("{}/", s.base));
    let d = get_json(
        &s.http,
        &format!("{}/.well-known/openid-configuration", s.base),
    )
    .await;
    assert_eq!(d["issuer"], s.base);
    assert_eq!(d["token_endpoint"], format!("{}/connect/token", s.base));
    assert_eq!(
        d["token_endpoint_auth_methods_supported"],
        serde_json::json!(["client_secret_basic", "client_secret_post"])
    );
    let later =
        s.x.authorize("app", "alice", std::slice::from_ref(&s.tenant));
    assert_eq!(verified_claims(&s, &later.id_token).await["iss"], s.base);
}
