//! Sending on a queue, as worker's `Queue::send` and `Queue::send_batch` do for a
//! message that is a string (content type `json`, no delay), without worker's serde path
//! for the options: the same objects reach the runtime.

use worker::js_sys::{Array, Object, Reflect};
use worker::wasm_bindgen::{JsCast, JsValue};
use worker::wasm_bindgen_futures::JsFuture;
use worker::Queue;

/// `{contentType: "json", delaySeconds: undefined}`, as worker writes a message's options.
fn json_options(target: &Object) -> Result<(), JsValue> {
    Reflect::set(target, &"contentType".into(), &"json".into())?;
    Reflect::set(target, &"delaySeconds".into(), &JsValue::UNDEFINED)?;
    Ok(())
}

fn sys(queue: &Queue) -> &worker::worker_sys::Queue {
    let value: &JsValue = queue.as_ref();
    value.unchecked_ref()
}

/// Sends one message whose body is `body`.
pub(super) async fn send(queue: &Queue, body: String) -> worker::Result<()> {
    let options = Object::new();
    json_options(&options)?;
    let sent = sys(queue).send(JsValue::from(body), options.into())?;
    JsFuture::from(sent).await?;
    Ok(())
}

/// Sends one message per body, in one call.
pub(super) async fn send_batch(queue: &Queue, bodies: Vec<String>) -> worker::Result<()> {
    let messages = Array::new();
    for body in bodies {
        let message = Object::new();
        Reflect::set(&message, &"body".into(), &JsValue::from(body))?;
        json_options(&message)?;
        messages.push(&message);
    }
    let sent = sys(queue).send_batch(messages, JsValue::UNDEFINED)?;
    JsFuture::from(sent).await?;
    Ok(())
}
