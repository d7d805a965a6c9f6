// The gateway's OpenAI API as the page uses it. Every request goes to the page's own origin
// (paths relative to the page, checked, and the page's CSP allows no other `connect-src`), the
// API key only ever as `Authorization: Bearer` and never through a redirect. OpenAI error
// bodies, in a response or inside a stream, become `GatewayError`s with the fields shown.

/** An error the gateway reported (or the failure to reach it), ready to be shown. */
export class GatewayError extends Error {
  constructor(message, { status = null, type = null, code = null, param = null, retryAfter = null, inStream = false } = {}) {
    super(message);
    this.name = "GatewayError";
    this.status = status;
    this.type = type;
    this.code = code;
    this.param = param;
    this.retryAfter = retryAfter;
    this.inStream = inStream;
  }

  /** "HTTP 401 · invalid_request_error · invalid_api_key", for the line under the message. */
  get details() {
    return [
      this.status ? `HTTP ${this.status}` : null,
      this.inStream ? "during the stream" : null,
      this.type,
      this.code,
      this.param ? `param: ${this.param}` : null,
      this.retryAfter ? `retry after ${this.retryAfter} s` : null,
    ]
      .filter(Boolean)
      .join(" · ");
  }

  get isAuthentication() {
    return this.status === 401;
  }
}

export class Gateway {
  #key;

  /** `key()` returns the API key to send now ("" for none). */
  constructor(key) {
    this.#key = key;
  }

  #headers(extra) {
    const headers = new Headers(extra);
    const key = this.#key().trim();
    if (key) headers.set("Authorization", `Bearer ${key}`);
    return headers;
  }

  async #fetch(path, init) {
    // Relative to the page, so a gateway behind a path prefix works too; never another origin.
    const url = new URL(path, document.baseURI);
    if (url.origin !== window.location.origin) throw new GatewayError(`Refused to call ${url.origin}.`);
    try {
      return await fetch(url, { ...init, credentials: "omit", cache: "no-store", redirect: "error" });
    } catch (error) {
      if (error.name === "AbortError") throw error;
      throw new GatewayError(`Could not reach the gateway (${error.message}).`);
    }
  }

  /** GET a JSON resource, e.g. "v1/models" or "health". */
  async getJSON(path, signal) {
    const response = await this.#fetch(path, { headers: this.#headers({ Accept: "application/json" }), signal });
    if (!response.ok) throw await errorFrom(response);
    return response.json();
  }

  /** POST a streaming chat completion; yields each chunk (an object) until `[DONE]`. */
  async *streamChat(body, signal) {
    const response = await this.#fetch("v1/chat/completions", {
      method: "POST",
      headers: this.#headers({ "Content-Type": "application/json", Accept: "text/event-stream" }),
      body: JSON.stringify({ ...body, stream: true }),
      signal,
    });
    if (!response.ok) throw await errorFrom(response);
    if (!response.body) throw new GatewayError("The gateway's answer has no body to read.");
    for await (const data of serverSentData(response.body)) {
      if (data === "[DONE]") return;
      let chunk;
      try {
        chunk = JSON.parse(data);
      } catch {
        throw new GatewayError("The gateway sent an event that is not JSON.", { inStream: true });
      }
      if (chunk && chunk.error) throw fromErrorBody(chunk, { inStream: true });
      yield chunk;
    }
    throw new GatewayError("The stream ended before it was complete ([DONE] never came).", { inStream: true });
  }
}

async function errorFrom(response) {
  const text = await response.text().catch(() => "");
  const retryAfter = response.headers.get("Retry-After");
  let body = null;
  try {
    body = JSON.parse(text);
  } catch {
    // not JSON: a proxy's error page, say
  }
  if (body && body.error) return fromErrorBody(body, { status: response.status, retryAfter });
  const message = text.trim().slice(0, 300) || response.statusText || "The gateway answered with an error.";
  return new GatewayError(message, { status: response.status, retryAfter });
}

function fromErrorBody(body, extra) {
  const error = body.error;
  if (typeof error === "string") return new GatewayError(error, extra);
  return new GatewayError(String(error.message ?? "The gateway reported an error."), {
    ...extra,
    type: error.type ?? null,
    code: error.code ?? null,
    param: error.param ?? null,
  });
}

/**
 * The `data` of each event of a server-sent-events byte stream, as the HTML standard's parser
 * reads it: lines end with CR, LF or CRLF (even split across reads), `:` starts a comment,
 * several `data:` lines of one event are joined with "\n", a blank line ends the event, and
 * an event cut off by the end of the stream is dropped.
 * https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation
 */
export async function* serverSentData(stream) {
  const reader = stream.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let data = [];
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      // A CR at the very end may be the first half of a CRLF: keep it for the next read.
      const cut = buffer.endsWith("\r") ? buffer.length - 1 : buffer.length;
      const lines = buffer.slice(0, cut).split(/\r\n|\r|\n/);
      buffer = lines.pop() + buffer.slice(cut);
      for (const line of lines) {
        if (line === "") {
          if (data.length) yield data.join("\n");
          data = [];
        } else if (!line.startsWith(":")) {
          const colon = line.indexOf(":");
          const field = colon < 0 ? line : line.slice(0, colon);
          let value = colon < 0 ? "" : line.slice(colon + 1);
          if (value.startsWith(" ")) value = value.slice(1);
          if (field === "data") data.push(value);
        }
      }
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}
