// Audio for the chat: recording from the microphone (MediaRecorder) and turning a recording or
// an audio file into an `input_audio` part. OpenAI documents only "wav" and "mp3" for
// input_audio, so the page sends those: an MP3 file as it is (small), anything else (the
// recorder's WebM/Opus, FLAC, M4A, ...) decoded by the browser and re-encoded as 16 kHz mono
// 16-bit PCM WAV, the rate Gemma 3n's audio encoder hears. Only a file the browser cannot decode
// goes as its own bytes, under the format its bytes show; the gateway decodes that (PyAV).

export const SAMPLE_RATE = 16000;
export const MAX_RECORDING_SECONDS = 300; // the gateway's default MAX_NATIVE_AUDIO_SECONDS

// The `format` names the gateway accepts, by what a file's first bytes show.
const SIGNATURES = [
  ["wav", (b) => ascii(b, 0, 4) === "RIFF" && ascii(b, 8, 12) === "WAVE"],
  ["mp3", (b) => ascii(b, 0, 3) === "ID3" || (b[0] === 0xff && (b[1] & 0xe6) === 0xe2)],
  ["aac", (b) => b[0] === 0xff && (b[1] & 0xf6) === 0xf0],
  ["flac", (b) => ascii(b, 0, 4) === "fLaC"],
  ["ogg", (b) => ascii(b, 0, 4) === "OggS"],
  ["webm", (b) => b[0] === 0x1a && b[1] === 0x45 && b[2] === 0xdf && b[3] === 0xa3],
  ["m4a", (b) => ascii(b, 4, 8) === "ftyp"],
  ["aiff", (b) => ascii(b, 0, 4) === "FORM" && ["AIFF", "AIFC"].includes(ascii(b, 8, 12))],
];

function ascii(bytes, start, end) {
  return String.fromCharCode(...bytes.subarray(start, end));
}

/** The gateway's name for the format of `bytes` (a Uint8Array), or null. */
export function sniffFormat(bytes) {
  const found = SIGNATURES.find(([, matches]) => bytes.length >= 12 && matches(bytes));
  return found ? found[0] : null;
}

/** Mono float samples at `rate` as a 16-bit PCM WAV file (Uint8Array). */
export function encodeWav(samples, rate = SAMPLE_RATE) {
  const out = new DataView(new ArrayBuffer(44 + samples.length * 2));
  const text = (offset, value) => [...value].forEach((c, i) => out.setUint8(offset + i, c.charCodeAt(0)));
  text(0, "RIFF");
  out.setUint32(4, 36 + samples.length * 2, true);
  text(8, "WAVE");
  text(12, "fmt ");
  out.setUint32(16, 16, true); // PCM format chunk size
  out.setUint16(20, 1, true); // PCM
  out.setUint16(22, 1, true); // mono
  out.setUint32(24, rate, true);
  out.setUint32(28, rate * 2, true); // bytes per second
  out.setUint16(32, 2, true); // bytes per frame
  out.setUint16(34, 16, true); // bits per sample
  text(36, "data");
  out.setUint32(40, samples.length * 2, true);
  for (let i = 0; i < samples.length; i += 1) {
    const s = Math.max(-1, Math.min(1, samples[i]));
    out.setInt16(44 + i * 2, s < 0 ? s * 0x8000 : s * 0x7fff, true);
  }
  return new Uint8Array(out.buffer);
}

/** Decoded audio (any format the browser reads) as 16 kHz mono samples and its duration. */
export async function decodeToMono(bytes) {
  // decodeAudioData resamples to its context's rate, so a 16 kHz context does the resampling.
  const context = new OfflineAudioContext(1, 1, SAMPLE_RATE);
  const decoded = await context.decodeAudioData(bytes.slice().buffer);
  const mono = new Float32Array(decoded.length);
  for (let channel = 0; channel < decoded.numberOfChannels; channel += 1) {
    const data = decoded.getChannelData(channel);
    for (let i = 0; i < data.length; i += 1) mono[i] += data[i] / decoded.numberOfChannels;
  }
  return { samples: mono, seconds: decoded.duration };
}

/**
 * A recording or an audio file (a Blob) as what an input_audio part carries:
 * `{ data: base64, format, seconds, note, blob }`, `blob` being the bytes sent (for playback).
 */
export async function toInputAudio(blob) {
  const bytes = new Uint8Array(await blob.arrayBuffer());
  if (bytes.length === 0) throw new Error("The audio is empty.");
  const sniffed = sniffFormat(bytes);
  const asItIs = async (format) => ({ data: await base64(blob), format, seconds: null, note: `${format.toUpperCase()}, as it is`, blob });
  if (sniffed === "mp3") return asItIs("mp3");
  let decoded;
  try {
    decoded = await decodeToMono(bytes);
  } catch (error) {
    if (sniffed === null) throw new Error(`This browser cannot read this audio (${error.message}).`);
    return asItIs(sniffed);
  }
  const wav = new Blob([encodeWav(decoded.samples)], { type: "audio/wav" });
  return { data: await base64(wav), format: "wav", seconds: decoded.seconds, note: "WAV 16 kHz mono", blob: wav };
}

/** A Blob's bytes as base64, by the browser's own encoder. */
export function base64(blob) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result).slice(String(reader.result).indexOf(",") + 1));
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(blob);
  });
}

/** The microphone, recorded with MediaRecorder until `stop()`. */
export class Recorder {
  #stream = null;
  #recorder = null;
  #chunks = [];
  startedAt = 0;

  /** Why recording cannot work here, or null. */
  static unavailableReason() {
    if (!window.isSecureContext) return "The microphone needs HTTPS (or localhost).";
    if (!navigator.mediaDevices?.getUserMedia || !window.MediaRecorder) return "This browser cannot record audio.";
    return null;
  }

  get recording() {
    return this.#recorder !== null;
  }

  async start() {
    // The model should hear what the microphone hears: call-style processing (echo
    // cancellation, noise suppression, gain) is tuned for people, not for a speech model.
    this.#stream = await navigator.mediaDevices.getUserMedia({
      audio: { echoCancellation: false, noiseSuppression: false, autoGainControl: false },
    });
    this.#chunks = [];
    this.#recorder = new MediaRecorder(this.#stream);
    this.#recorder.addEventListener("dataavailable", (event) => {
      if (event.data.size) this.#chunks.push(event.data);
    });
    this.#recorder.start(250);
    this.startedAt = performance.now();
  }

  /** Stop, release the microphone and return the recording (a Blob). */
  stop() {
    const recorder = this.#recorder;
    if (recorder === null) return Promise.resolve(null);
    return new Promise((resolve) => {
      recorder.addEventListener(
        "stop",
        () => {
          for (const track of this.#stream.getTracks()) track.stop();
          this.#stream = null;
          this.#recorder = null;
          resolve(new Blob(this.#chunks, { type: recorder.mimeType }));
        },
        { once: true },
      );
      recorder.stop();
    });
  }

  get seconds() {
    return this.recording ? (performance.now() - this.startedAt) / 1000 : 0;
  }
}
