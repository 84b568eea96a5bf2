// mmfm serve's page: plain JS over the same OpenAI-shaped API that clients use.
"use strict";
const $ = (id) => document.getElementById(id);
let models = {};

function showError(msg) { $("error").textContent = msg || ""; }

async function api(path, body) {
  const r = await fetch(path, {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)});
  const data = await r.json();
  if (!r.ok) throw new Error(data.error ? data.error.message : r.statusText);
  return data;
}

function selectModel() {
  const m = models[$("model").value];
  for (const f of ["gpt", "clip", "dit"]) $(f + "-panel").hidden = !m || m.family !== f;
  showError("");
  if (!m) return;
  $("model-info").textContent = m.family + (m.context_length ? `, context ${m.context_length}` : "");
  if (m.family === "gpt") { $("gpt-chat").disabled = !m.chat; $("gpt-chat").checked = false; }
  if (m.family === "dit") {
    const byClass = m.conditioning === "class";
    $("dit-class-label").hidden = !byClass;
    $("dit-prompt-label").hidden = m.conditioning !== "text" && m.conditioning !== "captions";
    $("dit-class").innerHTML = "";
    for (const c of m.classes) $("dit-class").add(new Option(c, c));
  }
}

async function loadModels() {
  const r = await fetch("/v1/models");
  const data = (await r.json()).data;
  for (const m of data) { models[m.id] = m; $("model").add(new Option(`${m.id} (${m.family})`, m.id)); }
  $("status").textContent = data.length ? "" : "no models are served";
  selectModel();
}

// --- GPT: stream the completion as server-sent events -----------------------------------------------------
async function runGPT() {
  const model = $("model").value, out = $("gpt-output"), chat = $("gpt-chat").checked;
  const body = {model, stream: true, max_tokens: +$("gpt-max").value, temperature: +$("gpt-temp").value,
                top_p: +$("gpt-top-p").value};
  if (chat) body.messages = [{role: "user", content: $("gpt-prompt").value}];
  else body.prompt = $("gpt-prompt").value;
  out.textContent = chat ? "" : $("gpt-prompt").value;
  showError(""); $("gpt-run").disabled = true;
  try {
    const r = await fetch(chat ? "/v1/chat/completions" : "/v1/completions",
                          {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)});
    if (!r.ok) { const e = await r.json(); throw new Error(e.error.message); }
    const reader = r.body.getReader(), decoder = new TextDecoder();
    let buf = "";
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      buf += decoder.decode(value, {stream: true});
      let cut;
      while ((cut = buf.indexOf("\n\n")) >= 0) {
        const line = buf.slice(0, cut).trim(); buf = buf.slice(cut + 2);
        if (!line.startsWith("data: ") || line === "data: [DONE]") continue;
        const ev = JSON.parse(line.slice(6));
        for (const c of ev.choices) out.textContent += chat ? (c.delta.content || "") : c.text;
      }
    }
    out.dataset.done = "1";
  } catch (e) { showError(e.message); } finally { $("gpt-run").disabled = false; }
}

// --- CLIP: an image and labels -> bars -----------------------------------------------------------------------
let clipImage = null;
function readImage(file) {
  const fr = new FileReader();
  fr.onload = () => { clipImage = fr.result; $("clip-preview").src = fr.result; $("clip-preview").hidden = false; };
  fr.readAsDataURL(file);
}

async function runCLIP() {
  if (!clipImage) { showError("choose or drop an image first"); return; }
  const labels = $("clip-labels").value.split(",").map((s) => s.trim()).filter((s) => s);
  showError("");
  try {
    const r = await api("/v1/classify", {model: $("model").value, image: clipImage, labels,
                                         template: $("clip-template").value});
    const box = $("clip-results"); box.innerHTML = "";
    for (const l of r.labels) {
      const row = document.createElement("div"); row.className = "bar-row";
      row.innerHTML = `<span class="label"></span><div><div class="bar" style="width:${(100 * l.probability).toFixed(1)}%"></div></div><span>${(100 * l.probability).toFixed(1)}%</span>`;
      row.querySelector(".label").textContent = l.label;
      box.appendChild(row);
    }
  } catch (e) { showError(e.message); }
}

// --- DiT: a class or a prompt -> a grid of samples -------------------------------------------------------------
async function runDiT() {
  const m = models[$("model").value];
  const byText = m.conditioning === "text" || m.conditioning === "captions";
  const prompt = m.conditioning === "class" ? $("dit-class").value : (byText ? $("dit-prompt").value : "");
  showError(""); $("dit-run").disabled = true;
  try {
    const r = await api("/v1/images/generations", {model: m.id, prompt, n: +$("dit-n").value, steps: +$("dit-steps").value,
                                                   guidance: +$("dit-guidance").value, seed: +$("dit-seed").value});
    const grid = $("dit-grid"); grid.innerHTML = "";
    for (const d of r.data) { const img = new Image(); img.src = "data:image/png;base64," + d.b64_json; grid.appendChild(img); }
  } catch (e) { showError(e.message); } finally { $("dit-run").disabled = false; }
}

window.addEventListener("DOMContentLoaded", () => {
  $("model").addEventListener("change", selectModel);
  $("gpt-run").addEventListener("click", runGPT);
  $("clip-run").addEventListener("click", runCLIP);
  $("dit-run").addEventListener("click", runDiT);
  $("clip-file").addEventListener("change", (e) => e.target.files[0] && readImage(e.target.files[0]));
  const drop = $("clip-drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault(); drop.classList.remove("over");
    if (e.dataTransfer.files[0]) readImage(e.dataTransfer.files[0]);
  });
  loadModels().catch((e) => showError("could not list the models: " + e.message));
});
