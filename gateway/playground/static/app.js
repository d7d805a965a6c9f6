// The playground page: a conversation with the gateway's one model, streamed token by token,
// with images (file picker, paste, drag and drop) and audio (microphone or file) attached to a
// turn. State lives in this module; the DOM is built with createElement and textContent only.

import { Gateway, GatewayError } from "./api.js";
import { MAX_RECORDING_SECONDS, Recorder, toInputAudio } from "./audio.js";
import { renderMarkdown } from "./markdown.js";

const STORAGE_KEY = "gemma3n-playground.api-key";
const STORAGE_SETTINGS = "gemma3n-playground.settings";
const STATUS_INTERVAL_MS = 5000;

const $ = (id) => document.getElementById(id);
const ui = {
  model: $("model"),
  backend: $("backend"),
  settingsToggle: $("settings-toggle"),
  settings: $("settings"),
  apiKey: $("api-key"),
  keyHint: $("key-hint"),
  system: $("system-prompt"),
  temperature: $("temperature"),
  maxTokens: $("max-tokens"),
  conversation: $("conversation"),
  empty: $("empty"),
  composer: $("composer"),
  attachments: $("attachments"),
  prompt: $("prompt"),
  imageInput: $("image-input"),
  audioInput: $("audio-input"),
  record: $("record"),
  clear: $("clear"),
  regenerate: $("regenerate"),
  stop: $("stop"),
  send: $("send"),
  notice: $("notice"),
};

const gateway = new Gateway(() => ui.apiKey.value);

const state = {
  model: null, // the id /v1/models reported
  turns: [], // {role: "user", text, images, audio} | {role: "assistant", text, status, error, view}
  images: [], // attached to the next turn: {url (data:), preview (blob:), name}
  audio: [], // attached to the next turn: {data, format, seconds, note, preview, name}
  preparing: 0, // attachments still being read or converted
  controller: null, // the AbortController of the reply being streamed
  recorder: new Recorder(),
};

// --- settings and the key ------------------------------------------------------------------

// localStorage can be switched off (or full): the page then works, remembering nothing.
const storage = {
  get(name) {
    try {
      return localStorage.getItem(name);
    } catch {
      return null;
    }
  },
  set(name, value) {
    try {
      if (value) localStorage.setItem(name, value);
      else localStorage.removeItem(name);
    } catch {
      // not kept
    }
  },
};

function restoreSettings() {
  ui.apiKey.value = storage.get(STORAGE_KEY) ?? "";
  let saved = {};
  try {
    saved = JSON.parse(storage.get(STORAGE_SETTINGS) ?? "{}") ?? {};
  } catch {
    storage.set(STORAGE_SETTINGS, null);
  }
  if (typeof saved.system === "string") ui.system.value = saved.system;
  if (typeof saved.temperature === "string") ui.temperature.value = saved.temperature;
  if (typeof saved.maxTokens === "string") ui.maxTokens.value = saved.maxTokens;
}

function saveSettings() {
  const settings = { system: ui.system.value, temperature: ui.temperature.value, maxTokens: ui.maxTokens.value };
  storage.set(STORAGE_SETTINGS, JSON.stringify(settings));
}

let keyTimer = 0;
ui.apiKey.addEventListener("input", () => {
  storage.set(STORAGE_KEY, ui.apiKey.value.trim());
  window.clearTimeout(keyTimer);
  keyTimer = window.setTimeout(() => refreshModel(false), 300);
});
for (const input of [ui.system, ui.temperature, ui.maxTokens]) input.addEventListener("input", saveSettings);

function showSettings(open) {
  ui.settings.hidden = !open;
  ui.settingsToggle.setAttribute("aria-expanded", String(open));
}
ui.settingsToggle.addEventListener("click", () => showSettings(ui.settings.hidden));
ui.settings.addEventListener("submit", (event) => event.preventDefault()); // Enter in a field

function askForKey(message) {
  showSettings(true);
  ui.apiKey.classList.add("wanted");
  ui.keyHint.textContent = message;
  ui.apiKey.focus();
}

// A 401 from /v1/models is not asked again until the key changes (no 401 every few seconds).
let modelRefusedKey = null;

function keyAccepted() {
  ui.apiKey.classList.remove("wanted");
  ui.keyHint.textContent = "";
}

// --- model and backend status --------------------------------------------------------------

/**
 * Ask /v1/models which model is served; `quiet` (the periodic refresh) moves no focus.
 * Returns the error that left the model unknown, or null.
 */
async function refreshModel(quiet) {
  const key = ui.apiKey.value.trim();
  try {
    const models = await gateway.getJSON("v1/models");
    state.model = models.data?.[0]?.id ?? null;
    ui.model.textContent = state.model ?? "no model";
    ui.model.dataset.state = state.model ? "known" : "unknown";
    modelRefusedKey = null;
    keyAccepted();
    return null;
  } catch (error) {
    state.model = null;
    ui.model.dataset.state = "unknown";
    if (error instanceof GatewayError && error.isAuthentication) {
      ui.model.textContent = "API key needed";
      if (!quiet) askForKey(`${error.message} (${error.details})`);
      modelRefusedKey = key;
    } else {
      ui.model.textContent = "model unknown";
      ui.model.title = error.message;
    }
    return error;
  }
}

async function refreshBackend() {
  let label = "gateway unreachable";
  let status = "down";
  let detail = "";
  try {
    const health = await gateway.getJSON("health");
    const backend = health.backend ?? {};
    detail = backend.detail ?? "";
    if (backend.ready) [label, status] = ["ready", "ready"];
    else if (backend.reachable) [label, status] = ["loading", "loading"];
    else [label, status] = ["SGLang unreachable", "down"];
  } catch (error) {
    detail = error.message;
  }
  ui.backend.textContent = label;
  ui.backend.dataset.state = status;
  ui.backend.title = detail;
}

async function refreshStatus() {
  if (document.hidden) return;
  await refreshBackend();
  if (state.model === null && modelRefusedKey !== ui.apiKey.value.trim()) await refreshModel(true);
}

// --- attachments ---------------------------------------------------------------------------

function readAsDataURL(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result));
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

async function prepare(work) {
  state.preparing += 1;
  updateControls();
  try {
    await work();
  } catch (error) {
    notify(error.message);
  } finally {
    state.preparing -= 1;
    updateControls();
  }
}

function attachFiles(files) {
  for (const file of files) {
    if (file.type.startsWith("image/")) attachImage(file);
    else if (file.type.startsWith("audio/") || file.type === "video/webm") attachAudio(file, file.name);
    else notify(`${file.name || "That file"} is neither an image nor audio.`);
  }
}

function attachImage(file) {
  return prepare(async () => {
    const url = await readAsDataURL(file);
    state.images.push({ url, preview: URL.createObjectURL(file), name: file.name || "pasted image" });
    renderAttachments();
  });
}

function attachAudio(blob, name) {
  return prepare(async () => {
    const audio = await toInputAudio(blob);
    state.audio.push({ ...audio, preview: URL.createObjectURL(audio.blob), name }); // what is sent
    renderAttachments();
  });
}

function renderAttachments() {
  const chips = [];
  state.images.forEach((image, index) => {
    const chip = element("figure", "chip image");
    const img = element("img");
    img.src = image.preview;
    img.alt = image.name;
    img.addEventListener("error", () => img.replaceWith(element("span", "no-preview", image.name)), { once: true });
    chip.append(img, removeButton(() => state.images.splice(index, 1), image));
    chips.push(chip);
  });
  state.audio.forEach((audio, index) => {
    const chip = element("figure", "chip audio");
    const player = element("audio");
    player.controls = true;
    player.src = audio.preview;
    const caption = element("figcaption", "", [audio.name, audio.seconds ? formatSeconds(audio.seconds) : null, audio.note].filter(Boolean).join(" · "));
    chip.append(player, caption, removeButton(() => state.audio.splice(index, 1), audio));
    chips.push(chip);
  });
  ui.attachments.replaceChildren(...chips);
  ui.attachments.hidden = chips.length === 0;
  updateControls();
}

function removeButton(remove, item) {
  const button = element("button", "remove", "×");
  button.type = "button";
  button.title = `Remove ${item.name}`;
  button.setAttribute("aria-label", button.title);
  button.addEventListener("click", () => {
    remove();
    URL.revokeObjectURL(item.preview);
    renderAttachments();
  });
  return button;
}

// A file chosen with a picker is what that picker is for, whatever type the system reports.
ui.imageInput.addEventListener("change", () => {
  for (const file of ui.imageInput.files) attachImage(file);
  ui.imageInput.value = "";
});
ui.audioInput.addEventListener("change", () => {
  for (const file of ui.audioInput.files) attachAudio(file, file.name);
  ui.audioInput.value = "";
});
document.addEventListener("paste", (event) => {
  const files = [...(event.clipboardData?.files ?? [])].filter((file) => file.type.startsWith("image/"));
  if (files.length) attachFiles(files);
});
document.addEventListener("dragover", (event) => {
  if (!event.dataTransfer?.types.includes("Files")) return;
  event.preventDefault();
  event.dataTransfer.dropEffect = "copy";
  document.body.classList.add("dropping");
});
document.addEventListener("dragleave", (event) => {
  if (event.relatedTarget === null) document.body.classList.remove("dropping");
});
document.addEventListener("drop", (event) => {
  document.body.classList.remove("dropping");
  if (!event.dataTransfer?.files.length) return;
  event.preventDefault();
  attachFiles([...event.dataTransfer.files]);
});

// --- the microphone ------------------------------------------------------------------------

let recordTimer = 0;
ui.record.addEventListener("click", async () => {
  const recorder = state.recorder;
  if (recorder.recording) {
    await stopRecording();
    return;
  }
  const unavailable = Recorder.unavailableReason();
  if (unavailable) {
    notify(unavailable);
    return;
  }
  try {
    await recorder.start();
  } catch (error) {
    notify(error.name === "NotAllowedError" ? "Microphone access was refused." : `Cannot record: ${error.message}`);
    return;
  }
  ui.record.classList.add("recording");
  ui.record.setAttribute("aria-pressed", "true");
  const tick = () => {
    ui.record.textContent = `Stop recording ${formatSeconds(recorder.seconds)}`;
    if (recorder.seconds >= MAX_RECORDING_SECONDS) stopRecording();
  };
  tick();
  recordTimer = window.setInterval(tick, 250);
});

async function stopRecording() {
  window.clearInterval(recordTimer);
  ui.record.classList.remove("recording");
  ui.record.setAttribute("aria-pressed", "false");
  ui.record.textContent = "Record";
  const blob = await state.recorder.stop();
  if (blob) await attachAudio(blob, "recording");
}

// --- the conversation ----------------------------------------------------------------------

function requestBody() {
  const messages = [];
  const system = ui.system.value.trim();
  if (system) messages.push({ role: "system", content: system });
  for (const turn of state.turns) {
    if (turn.role === "user") messages.push({ role: "user", content: userContent(turn) });
    else if (turn.status !== "failed" && turn.text) messages.push({ role: "assistant", content: turn.text });
  }
  const body = { model: state.model, messages, stream_options: { include_usage: true } };
  const temperature = Number.parseFloat(ui.temperature.value);
  if (Number.isFinite(temperature)) body.temperature = temperature;
  const maxTokens = Number.parseInt(ui.maxTokens.value, 10);
  if (Number.isFinite(maxTokens)) body.max_completion_tokens = maxTokens;
  return body;
}

function userContent(turn) {
  if (!turn.images.length && !turn.audio.length) return turn.text;
  const parts = turn.text ? [{ type: "text", text: turn.text }] : [];
  for (const image of turn.images) parts.push({ type: "image_url", image_url: { url: image.url } });
  for (const audio of turn.audio) parts.push({ type: "input_audio", input_audio: { data: audio.data, format: audio.format } });
  return parts;
}

async function send() {
  if (state.controller || state.preparing) return;
  const text = ui.prompt.value.trim();
  if (!text && !state.images.length && !state.audio.length) return;
  const turn = { role: "user", text, images: state.images, audio: state.audio };
  state.images = [];
  state.audio = [];
  ui.prompt.value = "";
  renderAttachments();
  addTurn(turn);
  await reply();
}

async function reply() {
  const turn = { role: "assistant", text: "", status: "streaming", error: null, view: null };
  const controller = new AbortController();
  state.controller = controller;
  addTurn(turn);
  updateControls();
  const started = performance.now();
  let firstToken = null;
  let usage = null;
  let finish = null;
  try {
    // Without the model's id there is nothing to ask; say why it is unknown (a 401, say).
    const unknown = state.model === null ? await refreshModel(false) : null;
    if (unknown) throw unknown;
    if (state.model === null) throw new GatewayError("The gateway lists no model at /v1/models.");
    for await (const chunk of gateway.streamChat(requestBody(), controller.signal)) {
      if (chunk.usage) usage = chunk.usage;
      const choice = chunk.choices?.[0];
      if (!choice) continue;
      const content = choice.delta?.content;
      if (content) {
        firstToken ??= performance.now();
        turn.text += content;
        scheduleRender(turn);
      }
      if (choice.finish_reason) finish = choice.finish_reason;
    }
    turn.status = "done";
  } catch (error) {
    if (error.name === "AbortError") {
      turn.status = "stopped";
    } else {
      turn.status = "failed";
      turn.error = error instanceof GatewayError ? error : new GatewayError(String(error.message ?? error));
      if (turn.error.isAuthentication) askForKey(turn.error.message);
    }
  } finally {
    if (state.controller === controller) state.controller = null;
    turn.meta = describeReply(turn, { started, firstToken, usage, finish });
    renderTurn(turn);
    updateControls();
  }
}

function describeReply(turn, { started, firstToken, usage, finish }) {
  const parts = [];
  if (usage) parts.push(`${usage.prompt_tokens} prompt + ${usage.completion_tokens} completion tokens`);
  if (firstToken !== null) {
    parts.push(`first token ${formatMs(firstToken - started)}`);
    const generating = (performance.now() - firstToken) / 1000;
    if (usage && usage.completion_tokens > 1 && generating >= 0.2) parts.push(`${(usage.completion_tokens / generating).toFixed(1)} tokens/s`);
  }
  if (finish === "length") parts.push("stopped at max tokens");
  if (turn.status === "stopped") parts.push("stopped");
  return parts.join(" · ");
}

function stop() {
  state.controller?.abort();
}

async function regenerate() {
  if (state.controller) return;
  const last = state.turns.at(-1);
  if (last?.role === "assistant") {
    state.turns.pop();
    last.view.remove();
  }
  if (state.turns.at(-1)?.role === "user") await reply();
}

function clear() {
  stop();
  for (const turn of state.turns) {
    for (const item of [...(turn.images ?? []), ...(turn.audio ?? [])]) URL.revokeObjectURL(item.preview);
  }
  state.turns = [];
  ui.conversation.replaceChildren(ui.empty);
  ui.empty.hidden = false;
  updateControls();
}

function addTurn(turn) {
  state.turns.push(turn);
  ui.empty.hidden = true;
  turn.view = element("article", `turn ${turn.role}`);
  ui.conversation.append(turn.view);
  renderTurn(turn);
  turn.view.scrollIntoView({ block: "end" });
}

function renderTurn(turn) {
  const view = turn.view;
  const nearBottom = ui.conversation.scrollHeight - ui.conversation.scrollTop - ui.conversation.clientHeight < 80;
  view.dataset.status = turn.status ?? "sent";
  const children = [element("header", "who", turn.role === "user" ? "You" : state.model ?? "Model")];
  if (turn.role === "user") {
    if (turn.images.length || turn.audio.length) {
      const media = element("div", "media");
      for (const image of turn.images) {
        const img = element("img");
        img.src = image.preview;
        img.alt = image.name;
        media.append(img);
      }
      for (const audio of turn.audio) {
        const player = element("audio");
        player.controls = true;
        player.src = audio.preview;
        media.append(player);
      }
      children.push(media);
    }
    if (turn.text) children.push(element("div", "content plain", turn.text));
  } else {
    const content = element("div", "content markdown");
    content.append(renderMarkdown(turn.text));
    if (turn.status === "streaming") content.append(element("span", "cursor", "▍"));
    children.push(content);
    if (turn.error) {
      const box = element("div", "error");
      box.setAttribute("role", "alert");
      box.append(element("strong", "error-message", turn.error.message), element("span", "error-details", turn.error.details));
      children.push(box);
    }
    if (turn.meta) children.push(element("footer", "meta", turn.meta));
  }
  view.replaceChildren(...children);
  if (nearBottom) ui.conversation.scrollTop = ui.conversation.scrollHeight;
}

// One render per frame at most while tokens arrive faster than the screen refreshes.
const pendingRenders = new Set();
function scheduleRender(turn) {
  if (pendingRenders.size === 0) {
    requestAnimationFrame(() => {
      for (const pending of pendingRenders) if (pending.status === "streaming") renderTurn(pending);
      pendingRenders.clear();
    });
  }
  pendingRenders.add(turn);
}

ui.conversation.addEventListener("click", async (event) => {
  const button = event.target.closest("button.copy");
  if (!button) return;
  const code = button.closest(".code")?.querySelector("code")?.textContent ?? "";
  try {
    await navigator.clipboard.writeText(code);
    button.textContent = "Copied";
  } catch {
    button.textContent = "Copy failed";
  }
  window.setTimeout(() => (button.textContent = "Copy"), 1500);
});

// --- controls ------------------------------------------------------------------------------

function updateControls() {
  const streaming = state.controller !== null;
  ui.send.hidden = streaming;
  ui.stop.hidden = !streaming;
  ui.send.disabled = state.preparing > 0;
  ui.send.textContent = state.preparing > 0 ? "Preparing…" : "Send";
  ui.regenerate.disabled = streaming || !state.turns.some((turn) => turn.role === "user");
  ui.clear.disabled = state.turns.length === 0 && !streaming;
}

ui.composer.addEventListener("submit", (event) => {
  event.preventDefault();
  send();
});
ui.prompt.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    send();
  }
});
ui.stop.addEventListener("click", stop);
ui.regenerate.addEventListener("click", regenerate);
ui.clear.addEventListener("click", clear);

let noticeTimer = 0;
function notify(message) {
  ui.notice.textContent = message;
  ui.notice.hidden = false;
  window.clearTimeout(noticeTimer);
  noticeTimer = window.setTimeout(() => (ui.notice.hidden = true), 8000);
}

// --- helpers -------------------------------------------------------------------------------

function element(tag, className = "", text = null) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== null) node.textContent = text;
  return node;
}

function formatSeconds(seconds) {
  const whole = Math.floor(seconds);
  return `${Math.floor(whole / 60)}:${String(whole % 60).padStart(2, "0")}`;
}

function formatMs(ms) {
  return ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(1)} s`;
}

// --- start ---------------------------------------------------------------------------------

restoreSettings();
showSettings(false);
renderAttachments();
updateControls();
refreshBackend();
refreshModel(false);
window.setInterval(refreshStatus, STATUS_INTERVAL_MS);
document.addEventListener("visibilitychange", refreshStatus);
document.documentElement.dataset.ready = "true";
