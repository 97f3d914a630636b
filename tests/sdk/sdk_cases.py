"""The providers' official Python SDKs, each configured only with the vault's base URL and a
user's vault token as its key, run one case at a time for tests/e2e/sdks.test.mjs.

Reads one JSON request a line on stdin:
    {"id": 1, "case": "openai.chat", "base": "http://127.0.0.1:N", "token": "<vault JWT>",
     "headers": {"X-Byok-Credential-Id": "..."}}   # headers: optional, through the SDK's own
                                                    # extra-headers option
and writes one JSON line a request on stdout:
    {"id": 1, "ok": true, "value": ...}            # what the SDK returned (bytes as base64)
    {"id": 1, "ok": false, "error": {"class", "status", "code", "body", "headers"}}

No SDK here may reach anything but loopback: connecting or resolving any other address
raises. No retries (a refusal is seen as the SDK first sees it), a short timeout, no API key
or base URL from the environment (the test starts this with a clean one).
"""

import base64
import ipaddress
import json
import socket
import struct
import sys
import traceback

TIMEOUT_S = 15
# Hosts and addresses the SDKs may reach: the vault under wrangler dev, on loopback.
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}


def _loopback(host):
    if host is None:
        return True
    if isinstance(host, bytes):
        host = host.decode()
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_getaddrinfo = socket.getaddrinfo
_connect = socket.socket.connect


def _guarded_getaddrinfo(host, *args, **kwargs):
    if not _loopback(host):
        raise OSError(f"sdk_cases: no network beyond loopback (asked to resolve {host!r})")
    return _getaddrinfo(host, *args, **kwargs)


def _guarded_connect(sock, address):
    if sock.family in (socket.AF_INET, socket.AF_INET6) and not _loopback(address[0]):
        raise OSError(f"sdk_cases: no network beyond loopback (asked to connect to {address[0]!r})")
    return _connect(sock, address)


socket.getaddrinfo = _guarded_getaddrinfo
socket.socket.connect = _guarded_connect

# Imported after the guard, so nothing they do at import time gets past it.
import anthropic  # noqa: E402
import openai  # noqa: E402
from deepgram import DeepgramClient  # noqa: E402
from deepgram.environment import DeepgramClientEnvironment  # noqa: E402
from elevenlabs.client import ElevenLabs  # noqa: E402
from google import genai  # noqa: E402
from google.genai import types as genai_types  # noqa: E402


def wav(seconds=0.5, rate=16000):
    """A small valid WAV file of silence: what an app would upload for a transcript."""
    frames = b"\x00\x00" * int(seconds * rate)
    header = b"RIFF" + struct.pack("<I", 36 + len(frames)) + b"WAVEfmt "
    header += struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16)
    return header + b"data" + struct.pack("<I", len(frames)) + frames


AUDIO_IN = wav()


# --- the clients: base URL and key, the extra headers through each SDK's own option -------

def openai_client(r):
    return openai.OpenAI(base_url=f"{r['base']}/v1/proxy/openai/v1", api_key=r["token"],
                         default_headers=r.get("headers"), max_retries=0, timeout=TIMEOUT_S)


def anthropic_client(r):
    return anthropic.Anthropic(base_url=f"{r['base']}/v1/proxy/anthropic", api_key=r["token"],
                               default_headers=r.get("headers"), max_retries=0, timeout=TIMEOUT_S)


def gemini_client(r):
    return genai.Client(api_key=r["token"], http_options=genai_types.HttpOptions(
        base_url=f"{r['base']}/v1/proxy/gemini", headers=r.get("headers"),
        timeout=TIMEOUT_S * 1000, retry_options=genai_types.HttpRetryOptions(attempts=1)))


def elevenlabs_client(r):
    return ElevenLabs(base_url=f"{r['base']}/v1/proxy/elevenlabs", api_key=r["token"],
                      headers=r.get("headers"), timeout=TIMEOUT_S)


# Fern's clients retry by default; a case asks for none.
NO_RETRIES = {"max_retries": 0}


def deepgram_client(r):
    base = f"{r['base']}/v1/proxy/deepgram"
    ws = "ws" + base[len("http"):]
    env = DeepgramClientEnvironment(base=base, production=ws, agent=ws, agent_rest=base)
    # telemetry_opt_out: a no-op in 7.x (it sends none), said anyway.
    return DeepgramClient(api_key=r["token"], environment=env, headers=r.get("headers"),
                          timeout=TIMEOUT_S, max_retries=0, telemetry_opt_out=True)


# --- the cases: each returns what the SDK gave the app -----------------------------------

def openai_chat(r):
    out = openai_client(r).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Say hello"}])
    return out.choices[0].message.content


def openai_chat_stream(r):
    stream = openai_client(r).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Say hello"}], stream=True,
        stream_options={"include_usage": True})
    text, usage = [], None
    for c in stream:
        if c.choices and c.choices[0].delta.content:
            text.append(c.choices[0].delta.content)
        if c.usage is not None:
            usage = c.usage.total_tokens
    return {"text": text, "total_tokens": usage}


def openai_embeddings(r):
    out = openai_client(r).embeddings.create(model="text-embedding-3-small", input="hello")
    return list(out.data[0].embedding)


def openai_speech(r):
    out = openai_client(r).audio.speech.create(model="gpt-4o-mini-tts", voice="alloy", input="Hello")
    return out.read()


def openai_transcription(r):
    out = openai_client(r).audio.transcriptions.create(model="whisper-1", file=("hello.wav", AUDIO_IN))
    return out.text


def anthropic_messages(r):
    out = anthropic_client(r).messages.create(
        model="claude-sonnet-4-5", max_tokens=64, messages=[{"role": "user", "content": "Say hello"}])
    return "".join(b.text for b in out.content if b.type == "text")


def anthropic_messages_stream(r):
    with anthropic_client(r).messages.stream(
            model="claude-sonnet-4-5", max_tokens=64,
            messages=[{"role": "user", "content": "Say hello"}]) as stream:
        text = list(stream.text_stream)
        usage = stream.get_final_message().usage
    return {"text": text, "input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens}


# google-genai closes its HTTP client when the Client is collected: an app keeps its client
# in a variable, and so does each case, for as long as it reads the answer.

def gemini_generate(r):
    client = gemini_client(r)
    return client.models.generate_content(model="gemini-2.0-flash", contents="Say hello").text


def gemini_generate_stream(r):
    client = gemini_client(r)
    text, usage = [], None
    for c in client.models.generate_content_stream(model="gemini-2.0-flash", contents="Say hello"):
        if c.text:
            text.append(c.text)
        if c.usage_metadata is not None:
            usage = c.usage_metadata.total_token_count
    return {"text": text, "total_tokens": usage}


def gemini_embed(r):
    client = gemini_client(r)
    out = client.models.embed_content(model="text-embedding-004", contents="hello")
    return list(out.embeddings[0].values)


def elevenlabs_tts(r):
    audio = elevenlabs_client(r).text_to_speech.convert(
        voice_id="21m00Tcm4TlvDq8ikWAM", text="Hello", model_id="eleven_multilingual_v2",
        request_options=NO_RETRIES)
    return b"".join(audio)


def elevenlabs_stt(r):
    out = elevenlabs_client(r).speech_to_text.convert(
        model_id="scribe_v1", file=("hello.wav", AUDIO_IN), request_options=NO_RETRIES)
    return out.text


def deepgram_listen(r):
    out = deepgram_client(r).listen.v1.media.transcribe_file(request=AUDIO_IN, model="nova-3")
    return out.results.channels[0].alternatives[0].transcript


def deepgram_speak(r):
    return b"".join(deepgram_client(r).speak.v1.audio.generate(text="Hello", model="aura-2-thalia-en"))


def openai_realtime(r):
    """A realtime session over the SDK's own WebSocket (its URL made from the base URL):
    the events it saw up to the first response's end, and that response's usage."""
    seen = []
    with openai_client(r).realtime.connect(model="gpt-realtime",
                                           extra_headers=r.get("headers") or {}) as conn:
        conn.session.update(session={"type": "realtime", "output_modalities": ["text"]})
        conn.response.create()
        for event in conn:
            seen.append(event.type)
            if event.type == "response.done":
                usage = event.response.usage
                return {"events": seen, "input_tokens": usage.input_tokens,
                        "output_tokens": usage.output_tokens}
    return {"events": seen}


def deepgram_live(r):
    """Live transcription over the SDK's own WebSocket: audio up, the transcript back, then
    CloseStream and the closing Metadata's duration."""
    transcripts = []
    with deepgram_client(r).listen.v1.connect(model="nova-3", encoding="linear16",
                                              sample_rate=16000) as conn:
        conn.send_media(AUDIO_IN)
        for message in conn:
            kind = getattr(message, "type", None)
            if kind == "Results":
                transcripts.append(message.channel.alternatives[0].transcript)
                conn.send_close_stream()
            elif kind == "Metadata":
                return {"transcripts": transcripts, "duration": message.duration}
    return {"transcripts": transcripts}


CASES = {
    "openai.chat": openai_chat,
    "openai.chat_stream": openai_chat_stream,
    "openai.embeddings": openai_embeddings,
    "openai.speech": openai_speech,
    "openai.transcription": openai_transcription,
    "anthropic.messages": anthropic_messages,
    "anthropic.messages_stream": anthropic_messages_stream,
    "gemini.generate_content": gemini_generate,
    "gemini.generate_content_stream": gemini_generate_stream,
    "gemini.embed_content": gemini_embed,
    "elevenlabs.text_to_speech": elevenlabs_tts,
    "elevenlabs.speech_to_text": elevenlabs_stt,
    "deepgram.listen": deepgram_listen,
    "deepgram.speak": deepgram_speak,
    "openai.realtime": openai_realtime,
    "deepgram.live": deepgram_live,
}


def plain(value):
    if isinstance(value, (bytes, bytearray)):
        return {"bytes_b64": base64.b64encode(value).decode()}
    return value


def failure(e):
    """What an app sees of a refusal: the SDK's exception, the status and the body where
    that SDK keeps them, and the answer's headers."""
    status = getattr(e, "status_code", None)
    if status is None and isinstance(getattr(e, "code", None), int):
        status = e.code  # google-genai keeps the HTTP status in `code`
    body = getattr(e, "body", None)
    if body is None:
        body = getattr(e, "details", None)  # google-genai: the parsed answer
    response = getattr(e, "response", None)
    headers = getattr(response, "headers", None) or getattr(e, "headers", None) or {}
    code = body.get("code") if isinstance(body, dict) else None
    if isinstance(body, (bytes, bytearray)):
        body = body.decode("utf-8", "replace")
    try:
        json.dumps(body)
    except (TypeError, ValueError):
        body = repr(body)
    return {
        "class": f"{type(e).__module__}.{type(e).__qualname__}",
        "status": status,
        "code": code,
        "message": str(e)[:2000],
        "body": body,
        "headers": {k.lower(): v for k, v in dict(headers).items()},
    }


def main():
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        try:
            answer = {"ok": True, "value": plain(CASES[request["case"]](request))}
        except Exception as e:  # noqa: BLE001 - every failure is reported to the test
            answer = {"ok": False, "error": failure(e), "trace": traceback.format_exc()[-3000:]}
        answer["id"] = request["id"]
        # Whatever an SDK put in a message, the token never reaches the test's output.
        sys.stdout.write(json.dumps(answer).replace(request["token"], "<vault token>") + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
