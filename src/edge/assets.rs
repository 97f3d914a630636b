//! The Worker's static assets (the `ASSETS` binding), as the core's [`Assets`] port. The
//! binding is called as the plain JS object it is: workers-rs's `Fetcher` wrapper would add
//! about 7 KB gzipped of request and response conversion that one read does not need.

use async_trait::async_trait;
use worker::js_sys::{Function, Promise, Reflect, Uint8Array};
use worker::wasm_bindgen::{JsCast, JsValue};
use worker::wasm_bindgen_futures::JsFuture;
use worker::{web_sys, Env};

use crate::api::Assets;

pub(super) struct AssetsBinding<'a>(pub &'a Env);

async fn read(env: &Env, path: &str) -> Result<Option<Vec<u8>>, JsValue> {
    let binding = Reflect::get(env, &JsValue::from_str("ASSETS"))?;
    if binding.is_undefined() {
        return Ok(None);
    }
    let fetch: Function = Reflect::get(&binding, &JsValue::from_str("fetch"))?.dyn_into()?;
    // The host is ignored by the binding: only the path names the file.
    let url = JsValue::from_str(&format!("https://assets.invalid{path}"));
    let promise: Promise = fetch.call1(&binding, &url)?.dyn_into()?;
    let response: web_sys::Response = JsFuture::from(promise).await?.unchecked_into();
    if response.status() != 200 {
        return Ok(None);
    }
    let buffer = JsFuture::from(response.array_buffer()?).await?;
    Ok(Some(Uint8Array::new(&buffer).to_vec()))
}

#[async_trait(?Send)]
impl Assets for AssetsBinding<'_> {
    async fn read(&self, path: &str) -> Option<Vec<u8>> {
        read(self.0, path).await.ok().flatten()
    }
}
