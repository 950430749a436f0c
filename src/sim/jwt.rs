//! The simulated Xero's signed tokens: RS256 JWTs (as Xero signs its `id_token`), their JWKS
//! and OpenID discovery document, for clients that validate them (xero-node's openid-client).
//!
//! The signing key is a fixed 2048-bit RSA key committed beside this file
//! (`signing-key.der`, PKCS#1 DER, made with `openssl genpkey -algorithm RSA` and `openssl rsa -traditional`). It exists for
//! the simulator only: it is public, signs nothing real and must never be trusted elsewhere.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use ring::rsa::PublicKeyComponents;
use ring::signature::{RsaKeyPair, RSA_PKCS1_SHA256};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::sync::{Arc, OnceLock};

const KEY: &[u8] = include_bytes!("signing-key.der");

/// The `kid` of the simulator's key, in each JWT header and in the JWKS.
pub const KEY_ID: &str = "sim-xero-rs256-1";

/// The parsed key, once per process (parsing RSA is not free).
fn key() -> &'static Arc<RsaKeyPair> {
    static KEY_PAIR: OnceLock<Arc<RsaKeyPair>> = OnceLock::new();
    KEY_PAIR.get_or_init(|| {
        Arc::new(RsaKeyPair::from_der(KEY).expect("the simulator's signing key parses"))
    })
}

/// `claims` as a compact RS256 JWS.
pub fn sign(claims: &Value) -> String {
    let header = json!({"alg": "RS256", "kid": KEY_ID, "typ": "JWT"});
    let input = format!(
        "{}.{}",
        B64.encode(header.to_string()),
        B64.encode(claims.to_string())
    );
    let key = key();
    let mut sig = vec![0; key.public().modulus_len()];
    key.sign(
        &RSA_PKCS1_SHA256,
        &ring::rand::SystemRandom::new(),
        input.as_bytes(),
        &mut sig,
    )
    .expect("RS256 signing does not fail with a valid key");
    format!("{input}.{}", B64.encode(sig))
}

/// The JWKS that verifies [`sign`]'s tokens.
pub fn jwks() -> Value {
    let c: PublicKeyComponents<Vec<u8>> = key().public().into();
    json!({"keys": [{
        "kty": "RSA", "use": "sig", "alg": "RS256", "kid": KEY_ID,
        "e": B64.encode(c.e), "n": B64.encode(c.n),
    }]})
}

/// OpenID Connect's `at_hash`: the left half of the access token's SHA-256, base64url.
pub fn at_hash(access_token: &str) -> String {
    let digest = Sha256::digest(access_token.as_bytes());
    B64.encode(&digest[..16])
}

/// The discovery document of an identity server reached at `issuer` (the shape of
/// `https://identity.xero.com/.well-known/openid-configuration`).
pub fn discovery(issuer: &str) -> Value {
    json!({
        "issuer": issuer,
        "jwks_uri": format!("{issuer}/.well-known/openid-configuration/jwks"),
        "authorization_endpoint": format!("{issuer}/connect/authorize"),
        "token_endpoint": format!("{issuer}/connect/token"),
        "userinfo_endpoint": format!("{issuer}/connect/userinfo"),
        "end_session_endpoint": format!("{issuer}/connect/endsession"),
        "check_session_iframe": format!("{issuer}/connect/checksession"),
        "revocation_endpoint": format!("{issuer}/connect/revocation"),
        "introspection_endpoint": format!("{issuer}/connect/introspect"),
        "frontchannel_logout_supported": true,
        "frontchannel_logout_session_supported": true,
        "backchannel_logout_supported": true,
        "backchannel_logout_session_supported": true,
        "scopes_supported": ["openid", "profile", "email", "offline_access"],
        "claims_supported": ["sub", "name", "family_name", "given_name", "email", "xero_userid", "global_session_id", "preferred_username"],
        "grant_types_supported": ["authorization_code", "client_credentials", "refresh_token", "implicit"],
        "response_types_supported": ["code", "token", "id_token", "id_token token", "code id_token", "code token", "code id_token token"],
        "response_modes_supported": ["form_post", "query", "fragment"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "code_challenge_methods_supported": ["plain", "S256"],
        "request_parameter_supported": true
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::RSA_PKCS1_2048_8192_SHA256;

    #[test]
    fn a_signed_token_verifies_with_the_published_jwks_and_a_changed_one_does_not() {
        let token = sign(&json!({"sub": "u", "n": 1}));
        let jwk = &jwks()["keys"][0];
        let part = |k: &str| B64.decode(jwk[k].as_str().unwrap()).unwrap();
        let public = PublicKeyComponents {
            n: part("n"),
            e: part("e"),
        };
        let (input, sig) = token.rsplit_once('.').unwrap();
        let sig = B64.decode(sig).unwrap();
        public
            .verify(&RSA_PKCS1_2048_8192_SHA256, input.as_bytes(), &sig)
            .expect("verifies");
        let (head, _) = input.split_once('.').unwrap();
        let forged = format!("{head}.{}", B64.encode(r#"{"sub":"v","n":1}"#));
        assert!(public
            .verify(&RSA_PKCS1_2048_8192_SHA256, forged.as_bytes(), &sig)
            .is_err());
        let header: Value = serde_json::from_slice(&B64.decode(head).unwrap()).unwrap();
        assert_eq!(header["alg"], "RS256");
        assert_eq!(header["kid"], jwk["kid"]);
    }

    #[test]
    fn at_hash_is_the_left_half_of_sha256_in_base64url() {
        // RFC 7515 style check: 16 bytes of digest are 22 base64url characters.
        assert_eq!(at_hash("x").len(), 22);
        assert_ne!(at_hash("x"), at_hash("y"));
    }
}
