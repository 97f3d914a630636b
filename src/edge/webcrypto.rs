//! RS256/ES256 signature checks with the platform's WebCrypto (`crypto.subtle`): native,
//! constant-time, and no RSA or elliptic-curve code in the wasm bundle.

use async_trait::async_trait;
use serde_json::json;
use worker::js_sys::{self, Array, Function, Promise, Reflect, Uint8Array, JSON};
use worker::wasm_bindgen::{JsCast, JsValue};
use worker::wasm_bindgen_futures::JsFuture;

use crate::auth::Algorithm;
use crate::auth::{PublicJwk, SignatureVerifier};

pub(super) struct WebCryptoVerifier;

fn get(target: &JsValue, name: &str) -> Result<JsValue, JsValue> {
    Reflect::get(target, &JsValue::from_str(name))
}

async fn call(subtle: &JsValue, method: &str, args: &Array) -> Result<JsValue, JsValue> {
    let f: Function = get(subtle, method)?.dyn_into()?;
    let promise: Promise = f.apply(subtle, args)?.dyn_into()?;
    JsFuture::from(promise).await
}

async fn check(
    alg: Algorithm,
    key: &PublicJwk,
    input: &[u8],
    signature: &[u8],
) -> Result<bool, JsValue> {
    let (jwk, import, verify) = match (alg, key) {
        (Algorithm::Rs256, PublicJwk::Rsa { n, e }) => (
            json!({"kty": "RSA", "n": n, "e": e, "alg": "RS256", "ext": true}),
            json!({"name": "RSASSA-PKCS1-v1_5", "hash": "SHA-256"}),
            json!({"name": "RSASSA-PKCS1-v1_5"}),
        ),
        (Algorithm::Es256, PublicJwk::P256 { x, y }) => (
            json!({"kty": "EC", "crv": "P-256", "x": x, "y": y, "ext": true}),
            json!({"name": "ECDSA", "namedCurve": "P-256"}),
            json!({"name": "ECDSA", "hash": "SHA-256"}),
        ),
        _ => return Ok(false),
    };
    let js = |v: serde_json::Value| JSON::parse(&v.to_string());
    let subtle = get(&get(&js_sys::global(), "crypto")?, "subtle")?;
    let import_args = Array::of5(
        &JsValue::from_str("jwk"),
        &js(jwk)?,
        &js(import)?,
        &JsValue::FALSE,
        &Array::of1(&JsValue::from_str("verify")),
    );
    let crypto_key = call(&subtle, "importKey", &import_args).await?;
    let verify_args = Array::of4(
        &js(verify)?,
        &crypto_key,
        &Uint8Array::from(signature).into(),
        &Uint8Array::from(input).into(),
    );
    Ok(call(&subtle, "verify", &verify_args)
        .await?
        .as_bool()
        .unwrap_or(false))
}

#[async_trait(?Send)]
impl SignatureVerifier for WebCryptoVerifier {
    async fn verify(
        &self,
        alg: Algorithm,
        key: &PublicJwk,
        input: &[u8],
        signature: &[u8],
    ) -> bool {
        match check(alg, key, input, signature).await {
            Ok(ok) => ok,
            Err(_) => {
                worker::console_warn!("jwt: WebCrypto refused a {} key or signature", alg.as_str());
                false
            }
        }
    }
}
